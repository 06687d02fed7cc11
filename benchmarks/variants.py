"""Model variants side by side: ``python -m benchmarks.variants [--model ID] [--variants fp32 int4 int8] [--out FILE]``

Loads one engine per variant of the model with the worker's own adapter (services/worker/engine.py, vLLM in-process;
int4's checkpoint is built first if it is missing, as a worker does), all at once, then runs rounds of the same
concurrent requests on each engine in turn, so every variant sees the machine in the same state. Reports, per variant:
the checkpoint's size on disk, load time, the memory the engine took as the worker measures it, output tokens per
second in each round and their median as a ratio to the first variant, its greedy answer to one question (a sanity
check), and its quality on a fixed text: perplexity, and how often its top-ranked next token is the first variant's.
Prints a Markdown report (and writes it with --out).

The text is the Python language reference that ships with the interpreter (``pydoc_data.topics``, English prose with
grammar and code), so the measure needs nothing from a model hub and is the same on every machine with the same
Python. The model never saw it as a prompt here; it may have seen it in training, which flatters every variant alike.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from benchmarks import OUT_HELP, emit_report
from services.worker.config import WorkerSettings
from services.worker.engine import Engine, EngineConfig, TokenScore, missing_cpu_kernels
from services.worker.model_store import ensure_model
from services.worker.variants import cpu_problems
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


def reference_text() -> str:
    """The Python language reference's topics, in a fixed order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def windows(engine: Engine, count: int, length: int) -> list[list[int]]:
    """``count`` consecutive windows of ``length`` tokens of the reference text."""
    ids = engine.token_ids(reference_text())
    if len(ids) < count * length:
        raise SystemExit(f"the reference text has {len(ids)} tokens, fewer than {count} x {length}")
    return [ids[i * length : (i + 1) * length] for i in range(count)]


@dataclass
class Quality:
    perplexity: float
    top1_agreement: float  # share of positions whose top-ranked token is the reference variant's (1.0 for itself)
    scored_tokens: int


def quality(scores: list[list[TokenScore]], reference: list[list[TokenScore]]) -> Quality:
    """Perplexity over all scored tokens, and top-1 agreement with ``reference`` position by position."""
    flat = [s for window in scores for s in window]
    same = sum(
        a.top_token_id == b.top_token_id
        for window, ref in zip(scores, reference, strict=True)
        for a, b in zip(window, ref, strict=True)
    )
    return Quality(math.exp(-sum(s.logprob for s in flat) / len(flat)), same / len(flat), len(flat))


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
        first_engine = engines[args.variants[0]]
        texts = windows(first_engine, args.score_windows, args.score_window_tokens)  # one tokenizer for all variants
        scores = {v: [await e.score(w) for w in texts] for v, e in engines.items()}
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
        f"{first} | perplexity | vs {first} | top-1 agreement with {first} | "
        f'answer to "{QUESTION}" (greedy) |',
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = statistics.median(rates[first])
    qualities = {v: quality(scores[v], scores[first]) for v in engines}
    for variant, engine in engines.items():
        median = statistics.median(rates[variant])
        answer = " ".join(answers[variant].split()).replace("|", "/")
        q = qualities[variant]
        lines.append(
            f"| {variant} | {disk[variant] / 1e6:.0f} | {engine.stats.load_seconds:.1f} | "
            f"{engine.stats.load_memory_bytes / (1 << 20):.0f} | {', '.join(f'{r:.0f}' for r in rates[variant])} | "
            f"{median:.0f} | {median / base:.2f} | {q.perplexity:.2f} | "
            f"{q.perplexity / qualities[first].perplexity:.3f} | {q.top1_agreement:.1%} | {answer} |"
        )
    scored = qualities[first].scored_tokens
    lines += [
        "",
        f"Quality: each variant scores the same {scored} tokens of the Python {platform.python_version()} language "
        f"reference (`pydoc_data.topics`, {args.score_windows} windows of {args.score_window_tokens} tokens, each "
        "token given the ones before it in its window). Perplexity is exp of the mean negative log-probability; "
        f"top-1 agreement is the share of positions where the variant ranks first the same next token as {first}.",
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
    parser.add_argument("--score-windows", type=int, default=8, help="windows of the reference text scored")
    parser.add_argument("--score-window-tokens", type=int, default=512)
    parser.add_argument("--out", type=Path, help=OUT_HELP)
    args = parser.parse_args()
    problems = cpu_problems(missing_cpu_kernels())
    for variant in [v for v in args.variants if v in problems]:
        print(f"{variant} left out: it cannot run on this CPU ({problems[variant]})", file=sys.stderr)
    args.variants = [v for v in args.variants if v not in problems]
    report = asyncio.run(run(args))
    emit_report(report, args.out)


if __name__ == "__main__":
    main()
