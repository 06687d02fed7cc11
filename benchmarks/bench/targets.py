"""Baselines to compare the platform with: a vLLM OpenAI server on the same model folder, started and stopped here,
and the engine itself called in-process (no HTTP, no Kafka: the floor any serving stack adds to)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from benchmarks.bench.metrics import RequestResult
from benchmarks.bench.prompts import BenchRequest
from benchmarks.bench.runner import Load, Target, drive


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def vllm_server(model_id: str, path: Path, max_model_len: int, log: Path, kv_cache_gib: int = 1) -> Iterator[Target]:
    """vLLM's own OpenAI server on ``path``, configured as ferry's worker runs the engine (float32 and eager on CPU,
    the same KV cache), so that a comparison measures the platform's overhead and not a different engine setup."""
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(path),
        "--served-model-name",
        model_id,
        "--max-model-len",
        str(max_model_len),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--generation-config",
        "vllm",
        "--disable-log-stats",
    ]
    env = dict(os.environ)
    from vllm.platforms import current_platform  # imported late: importing vLLM takes seconds

    if current_platform.is_cpu():
        command += ["--dtype", "float32", "--enforce-eager"]
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"vLLM server exited ({process.returncode}); see {log}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM server not ready in 300 s; see {log}")
            time.sleep(0.5)
        yield Target(name="vllm-direct", base_url=f"http://127.0.0.1:{port}/v1", model=model_id)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


async def run_in_process(
    model_id: str, path: Path, max_model_len: int, load: Load
) -> tuple[list[RequestResult], float, float]:
    """The benchmark against ferry's own engine adapter in this process, set up as the worker sets it up. Each engine
    step with text counts as a chunk (no coalescing), as vLLM's server streams them."""
    from services.worker.engine import Engine, EngineConfig  # imports vLLM: seconds, and only when asked for
    from shared.contracts import ChatMessage, SamplingParams

    engine = await Engine.start(EngineConfig(model_id=model_id, path=path, max_model_len=max_model_len))

    async def send_one(request: BenchRequest) -> RequestResult:
        started = time.monotonic()
        chunk_times: list[float] = []
        prompt_tokens = output_tokens = 0
        try:
            async with asyncio.timeout(load.timeout_s):
                prompt = engine.render_prompt([ChatMessage.model_validate(m) for m in request.messages])
                sampling = SamplingParams(max_tokens=request.max_tokens, temperature=0)
                async for step in engine.generate(uuid.uuid4().hex, prompt, sampling):
                    prompt_tokens = step.prompt_tokens
                    output_tokens += step.new_tokens
                    if step.text:
                        chunk_times.append(time.monotonic())
        except TimeoutError:
            return RequestResult(False, started, time.monotonic(), chunk_times, error="timeout")
        except Exception as exc:  # reported as a failure reason, like any target's
            return RequestResult(False, started, time.monotonic(), chunk_times, error=type(exc).__name__)
        if not chunk_times:
            return RequestResult(False, started, time.monotonic(), chunk_times, error="no content streamed")
        return RequestResult(True, started, time.monotonic(), chunk_times, prompt_tokens, output_tokens)

    try:
        return await drive("engine-in-process", send_one, load)
    finally:
        await engine.shutdown()
