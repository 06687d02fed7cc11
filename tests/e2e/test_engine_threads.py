"""The worker's engine on CPU computes with the OpenMP threads it is given (FERRY_WORKER_ENGINE_CPU_THREADS), not with
every core: run in-process, vLLM does not bind its model to cores, and its threads would otherwise spin on the core the
worker's own Kafka and screening need. Real vLLM, tiny model, in this process."""

from __future__ import annotations

import asyncio
import uuid

import psutil

from services.worker.engine import Engine, EngineConfig
from shared.contracts import SamplingParams
from shared.registry import read_seed
from tests.e2e.platform import MODELS_DIR, TINY_MODEL


async def busy_engine_threads(cpu_threads: int) -> int:
    """How many threads of the engine's process did a real share of the work of 32 concurrent requests."""
    record = next(m for m in read_seed() if m.id == TINY_MODEL)
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    engine = await Engine.start(
        EngineConfig(TINY_MODEL, MODELS_DIR / TINY_MODEL, record.max_model_len, 0.25, 32, cpu_threads=cpu_threads)
    )
    try:
        started = [c for c in psutil.Process().children(recursive=True) if c.pid not in before]
        (process,) = [c for c in started if c.name().startswith("VLLM::EngineCor")]  # the model computes there

        def cpu_by_thread() -> dict[int, float]:
            return {t.id: t.user_time + t.system_time for t in process.threads()}

        async def one() -> None:
            prompt = " ".join(f"word{i}" for i in range(200))
            async for _ in engine.generate(uuid.uuid4().hex, prompt, SamplingParams(max_tokens=64, temperature=0)):
                pass

        await asyncio.gather(*[one() for _ in range(4)])  # warm-up: the thread pool exists from here on
        start = cpu_by_thread()
        await asyncio.gather(*[one() for _ in range(32)])
        used = [seconds - start.get(thread, 0.0) for thread, seconds in cpu_by_thread().items()]
        return sum(1 for seconds in used if seconds > 0.25 * max(used))
    finally:
        await engine.shutdown()


def test_the_engine_computes_on_the_threads_it_is_given() -> None:
    assert asyncio.run(busy_engine_threads(1)) == 1
    assert asyncio.run(busy_engine_threads(2)) == 2
