"""Baselines to compare the platform with: a vLLM OpenAI server on the same model folder, started and stopped here."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from benchmarks.bench.runner import Target


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
