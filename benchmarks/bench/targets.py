"""Baselines to compare the platform with: a vLLM OpenAI server on the same model folder, started and stopped here,
and the engine itself called in-process (no HTTP, no Kafka: the floor any serving stack adds to)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.bench.metrics import RequestResult
from benchmarks.bench.prompts import BenchRequest
from benchmarks.bench.runner import Load, Target, drive
from shared.ports import free_port

if TYPE_CHECKING:
    from services.worker.engine import EngineConfig


@contextmanager
def vllm_server(model_id: str, path: Path, max_model_len: int, log: Path, kv_cache_gib: int = 1) -> Iterator[Target]:
    """vLLM's own OpenAI server on ``path``, configured as ferry's worker runs the engine (float32 and eager on CPU,
    the same KV cache), so that a comparison measures the platform's overhead and not a different engine setup."""
    port = free_port()
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
        from tests.e2e.platform import wait_healthy  # the one health wait

        wait_healthy(f"http://127.0.0.1:{port}", process, time.monotonic() + 300, "vLLM server", log)
        yield Target(name="vllm-direct", base_url=f"http://127.0.0.1:{port}/v1", model=model_id, pid=process.pid)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def worker_engine_config(model_id: str, path: Path, max_model_len: int, **fields: Any) -> EngineConfig:
    """An engine set up as a worker sets up its own, so a benchmark's engine computes as the worker's does: the
    worker's OpenMP threads and CPU priority (FERRY_WORKER_ENGINE_CPU_THREADS, FERRY_WORKER_ENGINE_NICE)."""
    from services.worker.config import WorkerSettings
    from services.worker.engine import EngineConfig  # imports vLLM: seconds, and only when asked for

    worker = WorkerSettings()
    return EngineConfig(
        model_id, path, max_model_len, cpu_threads=worker.engine_cpu_threads, cpu_nice=worker.engine_nice, **fields
    )


async def run_in_process(
    model_id: str, path: Path, max_model_len: int, load: Load
) -> tuple[list[RequestResult], float, float]:
    """The benchmark against ferry's own engine adapter in this process, set up as the worker sets it up. Each engine
    step with text counts as a chunk (no coalescing), as vLLM's server streams them."""
    from services.worker.engine import Engine
    from shared.contracts import ChatMessage, SamplingParams

    engine = await Engine.start(worker_engine_config(model_id, path, max_model_len))  # both sides compute alike
    salt = uuid.uuid4().hex  # one per run, as through the worker (see run_through_worker)

    async def send_one(request: BenchRequest) -> RequestResult:
        started = time.monotonic()
        chunk_times: list[float] = []
        prompt_tokens = output_tokens = 0
        try:
            async with asyncio.timeout(load.timeout_s):
                prompt = engine.render_prompt([ChatMessage.model_validate(m) for m in request.messages])
                sampling = SamplingParams(max_tokens=request.max_tokens, temperature=0)
                async for step in engine.generate(uuid.uuid4().hex, prompt, sampling, salt):
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


async def run_through_worker(model_id: str, load: Load) -> tuple[list[RequestResult], float, float]:
    """The benchmark against a running worker through Kafka alone (no ingress, no batcher): each request goes to the
    model's batch topic as a one-request BatchFormed, and its replies are read from a reply topic of the bench's own.
    Each TokensGenerated with text counts as a chunk. Kafka settings come from FERRY_* (the running platform's)."""
    import json

    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient

    from shared.contracts import BatchFormed, ChatMessage, CompletionRequested, SamplingParams
    from shared.kafka import tail
    from shared.settings import CommonSettings

    common = CommonSettings()
    reply_topic = common.topics.replies(f"bench-{uuid.uuid4().hex[:8]}")
    producer = AIOKafkaProducer(bootstrap_servers=common.kafka_bootstrap, linger_ms=0)
    await producer.start()
    consumer = await tail(common, reply_topic, "ferry-bench")
    queues: dict[str, asyncio.Queue[tuple[float, dict[str, object]]]] = {}

    async def route() -> None:
        async for record in consumer:
            event = json.loads(record.value)
            queue = queues.get(event["request_id"])
            if queue is not None:
                queue.put_nowait((time.monotonic(), event))

    router = asyncio.create_task(route())
    # one per run: a run repeated on the same worker (bench --rounds) must not find the prompts of the one before in
    # the engine's prefix cache, where an engine started for each run would not
    salt = uuid.uuid4().hex

    async def send_one(request: BenchRequest) -> RequestResult:
        request_id = f"bench-{uuid.uuid4().hex}"
        queue = queues[request_id] = asyncio.Queue()
        started = time.monotonic()
        chunk_times: list[float] = []
        completion = CompletionRequested(
            request_id=request_id,
            model=model_id,
            messages=[ChatMessage.model_validate(m) for m in request.messages],
            sampling=SamplingParams(max_tokens=request.max_tokens, temperature=0),
            reply_topic=reply_topic,
            cache_salt=salt,
        )
        batch = BatchFormed(batch_id=request_id, model=model_id, requests=[completion])
        try:
            async with asyncio.timeout(load.timeout_s):
                await producer.send_and_wait(common.topics.batches(model_id), batch.model_dump_json().encode())
                while True:
                    at, event = await queue.get()
                    if event["event"] == "tokens_generated" and (event["text"] or event.get("reasoning")):
                        chunk_times.append(at)
                    elif event["event"] == "generation_failed":
                        return RequestResult(False, started, at, chunk_times, error=str(event["code"]))
                    elif event["event"] == "completion_finished":
                        usage: dict[str, int] = event["usage"]  # type: ignore[assignment]
                        if not chunk_times:
                            return RequestResult(False, started, at, chunk_times, error="no content streamed")
                        return RequestResult(
                            True, started, at, chunk_times, usage["prompt_tokens"], usage["completion_tokens"]
                        )
        except TimeoutError:
            return RequestResult(False, started, time.monotonic(), chunk_times, error="timeout")
        finally:
            queues.pop(request_id, None)

    try:
        return await drive("worker-over-kafka", send_one, load)
    finally:
        router.cancel()
        await producer.stop()
        await consumer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=common.kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([reply_topic])
        finally:
            await admin.close()


async def model_start_times(model_id: str, process_server: bool) -> dict[str, float | bool | None]:
    """Cold start of ``model_id`` as a worker does it, on the worker's settings (models folder, the engine's threads
    and priority, see ``worker_engine_config``), in seconds: registry read, model folder, engine start, first token
    (``cold_*``); then a warm reload: the engine stopped and started again in the same process, with vLLM imported
    and the weights in the page cache (``warm_*``). vLLM's sleep/wake is not available on CPU. ``process_server``:
    engine processes fork from the preloaded server, started first as the worker starts it (else vLLM spawns them).
    Also the memory the cold engine took, as the worker measures it, next to the worker's estimate before a load
    (weights plus KV cache), and the server's own memory."""
    started = time.monotonic()
    from services.worker.engine_processes import start_engine_process_server

    if process_server:
        start_engine_process_server()
    from services.worker.config import WorkerSettings
    from services.worker.engine import Engine, GiB
    from services.worker.hosting import estimate_memory_bytes
    from services.worker.model_store import ensure_model
    from shared.contracts import ChatMessage, SamplingParams
    from shared.db import connect_pool
    from shared.registry import ModelRegistry
    from shared.settings import CommonSettings

    imported = time.monotonic()
    pool = await connect_pool(CommonSettings().postgres_dsn)
    try:
        record = await ModelRegistry(pool).get(model_id)
    finally:
        await pool.close()
    if record is None:
        raise SystemExit(f"{model_id} is not in the registry")
    worker = WorkerSettings()  # the models folder a worker would use
    path = await asyncio.to_thread(ensure_model, record.id, record.source, worker.models_dir)
    registry_read = time.monotonic()

    config = worker_engine_config(record.id, path, record.max_model_len, process_server=process_server)

    async def start_and_first_token() -> tuple[float, float, int]:
        """Seconds to the engine ready and to the first token, and the memory the engine took."""
        begin = time.monotonic()
        engine = await Engine.start(config)
        ready = time.monotonic()
        prompt = engine.render_prompt([ChatMessage(role="user", content="Hello!")])
        async for _ in engine.generate(uuid.uuid4().hex, prompt, SamplingParams(max_tokens=1, temperature=0)):
            break
        first = time.monotonic()
        await engine.shutdown()
        return ready - begin, first - begin, engine.stats.load_memory_bytes

    cold_engine, cold_first, cold_memory = await start_and_first_token()
    warm_engine, warm_first, _ = await start_and_first_token()
    return {
        "engine_process_server": process_server,
        "engine_cpu_threads": config.cpu_threads,  # None: one per core
        "engine_nice": config.cpu_nice,
        "cold_import_s": imported - started,
        "cold_registry_and_folder_s": registry_read - imported,
        "cold_engine_start_s": cold_engine,
        "cold_registry_to_first_token_s": registry_read - imported + cold_first,
        "cold_process_to_first_token_s": registry_read - started + cold_first,
        "warm_engine_start_s": warm_engine,
        "warm_reload_to_first_token_s": warm_first,
        "kv_cache_gib": config.kv_cache_gib,
        "engine_memory_estimated_mib": estimate_memory_bytes(path, "float32", None, int(config.kv_cache_gib * GiB))
        / (1 << 20),
        "engine_memory_measured_mib": cold_memory / (1 << 20),
        **(_server_memory_mib() if process_server else {}),
    }


def _server_memory_mib() -> dict[str, float]:
    """The engine-process server's unique memory, taken once its engines have stopped: then it is all the server
    holds beyond shared libraries (while engines run, they share part of it)."""
    import psutil

    (server,) = [c for c in psutil.Process().children() if "multiprocessing.forkserver" in " ".join(c.cmdline())]
    return {"process_server_memory_mib": server.memory_full_info().uss / (1 << 20)}
