"""Model variants side by side: ``python -m benchmarks.variants [--model ID] [--variants fp32 int4 int8] [--out FILE]``

Loads one engine per variant of the model with the worker's own adapter (services/worker/engine.py, vLLM in-process;
int4's checkpoint is built first if it is missing, as a worker does), all at once, then runs rounds of the same
concurrent requests on each engine in turn, so every variant sees the machine in the same state. Reports, per variant:
the checkpoint's size on disk, load time, the memory the engine took as the worker measures it, output tokens per
second in each round and their median as a ratio to the first variant, and its greedy answer to one question (a
sanity check of quality, not a measurement of it). Prints a Markdown report (and writes it with --out).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from pathlib import Path

from benchmarks import OUT_HELP, emit_report
from services.worker.config import WorkerSettings
from services.worker.engine import Engine, EngineConfig
from services.worker.model_store import ensure_model
from shared.contracts import ChatMessage, SamplingParams
from shared.registry import read_seed

ANIMALS = "cat dog fox owl bee ant cow pig elk yak emu eel bat rat hen ram".split()
QUESTION = "What is the capital of France?"


async def tokens_per_second(engine: Engine, concurrency: int, max_tokens: int) -> float:
    asks = [f"Write a short story about a {ANIMALS[i % len(ANIMALS)]}." for i in range(concurrency)]
    prompts = [engine.render_prompt([ChatMessage(role="user", content=ask)]) for ask in asks]

    async def one(prompt: str) -> int:
        generated = 0
        async for step in engine.generate(uuid.uuid4().hex, prompt, SamplingParams(max_tokens=max_tokens)):
            generated += step.new_tokens
        return generated

    started = time.perf_counter()
    total = sum(await asyncio.gather(*(one(p) for p in prompts)))
    return total / (time.perf_counter() - started)


async def greedy_answer(engine: Engine) -> str:
    prompt = engine.render_prompt([ChatMessage(role="user", content=QUESTION)])
    text = ""
    async for step in engine.generate(uuid.uuid4().hex, prompt, SamplingParams(max_tokens=24, temperature=0)):
        text += step.text
    return text


async def run(args: argparse.Namespace) -> str:
    record = next(m for m in read_seed() if m.id == args.model)
    models_dir = WorkerSettings().models_dir  # where the worker builds and finds model folders
    engines: dict[str, Engine] = {}
    disk: dict[str, int] = {}
    try:
        for variant in args.variants:
            path = await asyncio.to_thread(ensure_model, record.id, record.source, models_dir, variant)
            disk[variant] = sum(f.stat().st_size for f in path.glob("*.safetensors"))
            config = EngineConfig(record.id, path, record.max_model_len, args.kv_cache_gib, args.concurrency, variant)
            engines[variant] = await Engine.start(config)
        answers = {v: await greedy_answer(e) for v, e in engines.items()}
        for engine in engines.values():  # warm-up
            await tokens_per_second(engine, 4, 16)
        rates: dict[str, list[float]] = {v: [] for v in engines}
        for _ in range(args.rounds):
            for variant, engine in engines.items():
                rates[variant].append(await tokens_per_second(engine, args.concurrency, args.max_tokens))
    finally:
        for engine in engines.values():
            await engine.shutdown()
    first = args.variants[0]
    lines = [
        f"# Variants of {args.model} side by side",
        "",
        f"`python -m benchmarks.variants --model {args.model} --variants {' '.join(args.variants)}`: "
        f"{os.cpu_count()} cores, {args.concurrency} concurrent requests of {args.max_tokens} tokens (temperature 1), "
        f"{args.rounds} rounds, variants in turn within each round, KV cache {args.kv_cache_gib} GiB each.",
        "",
        "| variant | weights on disk (MB) | load (s) | memory taken (MiB) | tokens/s per round | median | vs "
        f'{first} | answer to "{QUESTION}" (greedy) |',
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = statistics.median(rates[first])
    for variant, engine in engines.items():
        median = statistics.median(rates[variant])
        answer = " ".join(answers[variant].split()).replace("|", "/")
        lines.append(
            f"| {variant} | {disk[variant] / 1e6:.0f} | {engine.stats.load_seconds:.1f} | "
            f"{engine.stats.load_memory_bytes / (1 << 20):.0f} | {', '.join(f'{r:.0f}' for r in rates[variant])} | "
            f"{median:.0f} | {median / base:.2f} | {answer} |"
        )
    lines += [
        "",
        "Memory taken: the unique memory of the engine's EngineCore process plus what this process grew while it "
        "started (the worker's measure, see services/worker/engine.py); most of it for a small model is the "
        "EngineCore's own Python runtime.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Model variants side by side: memory, load time, tokens/s")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--variants", nargs="+", default=["fp32", "int4", "int8"])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kv-cache-gib", type=float, default=1.0)
    parser.add_argument("--out", type=Path, help=OUT_HELP)
    args = parser.parse_args()
    report = asyncio.run(run(args))
    emit_report(report, args.out)


if __name__ == "__main__":
    main()
