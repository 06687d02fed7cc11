"""Warm reloads with the engine-process server's shipped preload list, or without vLLM's CPU worker in it.

python benchmarks/reports/start-times-process-server/preload-ab/preload_ab.py with-cpu-worker|without-cpu-worker MODEL
"""

import asyncio
import sys
import time
import uuid
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[4])]

import services.worker.engine_processes as engine_processes  # noqa: E402
from services.worker.engine import Engine, EngineConfig  # noqa: E402
from shared.contracts import ChatMessage, SamplingParams  # noqa: E402


async def main(variant: str, model: str) -> None:
    if variant == "without-cpu-worker":
        engine_processes.PRELOAD = [m for m in engine_processes.PRELOAD if m != "vllm.v1.worker.cpu_worker"]
    engine_processes.start_engine_process_server()
    config = EngineConfig(model_id=model, path=Path.home() / ".cache/ferry/models" / model, max_model_len=2048)
    engine = await Engine.start(config)
    await engine.shutdown()
    times = []
    for _ in range(3):
        begin = time.monotonic()
        engine = await Engine.start(config)
        prompt = engine.render_prompt([ChatMessage(role="user", content="Hi")])
        async for _step in engine.generate(uuid.uuid4().hex, prompt, SamplingParams(max_tokens=1, temperature=0)):
            break
        times.append(time.monotonic() - begin)
        await engine.shutdown()
    print("RESULT", variant, model, " ".join(f"{t:.2f}" for t in times), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
