"""Would an intermediate cache of rendered prompts pay off in the worker? ``python -m benchmarks.prompt_cache``

Measures, side by side in one run on the worker's own engine adapter (services/worker/engine.py, vLLM in-process):
- the work such a cache would skip: rendering the chat template and tokenizing the prompt, per prompt shape;
- what a hit would cost instead: a SHA-256 of the messages and a dict lookup;
- the request it is part of: time to first token and total time of the same prompt in vLLM (prefix cache warm, as
  it is when the same prompt comes back, which is the only case such a cache helps).
Prints a Markdown report (and writes it with --out).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import time
from pathlib import Path

from benchmarks import OUT_HELP, emit_report
from services.worker.engine import Engine, EngineConfig
from shared.contracts import ChatMessage, SamplingParams

WORDS = (
    "the platform serves requests from many tenants and each of them sends prompts of different length about "
    "invoices travel plans source code reviews weather reports and short questions that repeat during the day"
).split()


def text(words: int, offset: int = 0) -> str:
    return " ".join(WORDS[(offset + i) % len(WORDS)] for i in range(words))


SHAPES: dict[str, list[ChatMessage]] = {
    "short question (1 message, 12 words)": [ChatMessage(role="user", content=text(12))],
    "system prompt + question (2 messages, 300 words)": [
        ChatMessage(role="system", content=text(280, 3)),
        ChatMessage(role="user", content=text(20)),
    ],
    "conversation (6 messages, 1,200 words)": [
        ChatMessage(role="system" if i == 0 else ("user" if i % 2 else "assistant"), content=text(200, i))
        for i in range(6)
    ],
}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def key_of(messages: list[ChatMessage]) -> str:
    return hashlib.sha256(json.dumps([[m.role, m.content] for m in messages]).encode()).hexdigest()


async def measure(engine: Engine, messages: list[ChatMessage], repeats: int, requests: int) -> dict[str, float]:
    render_ms: list[float] = []
    tokens = 0
    for _ in range(repeats):
        started = time.perf_counter()
        prompt = engine.render_prompt(messages)
        tokens = len(engine.token_ids(prompt))
        render_ms.append((time.perf_counter() - started) * 1000)
    table = {key_of(messages): (prompt, list(range(tokens)))}
    hit_ms: list[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        found = table.get(key_of(messages))
        hit_ms.append((time.perf_counter() - started) * 1000)
        assert found is not None
    ttft_ms: list[float] = []
    total_ms: list[float] = []
    sampling = SamplingParams(max_tokens=16, temperature=0)
    for i in range(requests + 1):
        started = time.perf_counter()
        first = None
        async for step in engine.generate(f"bench-{time.monotonic_ns()}", prompt, sampling, "bench"):
            if first is None and step.new_tokens:
                first = time.perf_counter()
        if i == 0:
            continue  # the first one fills vLLM's prefix cache
        ttft_ms.append(((first or time.perf_counter()) - started) * 1000)
        total_ms.append((time.perf_counter() - started) * 1000)
    return {
        "prompt_tokens": tokens,
        "render_p50": statistics.median(render_ms),
        "render_p99": pct(render_ms, 0.99),
        "hit_p50": statistics.median(hit_ms),
        "ttft_p50": statistics.median(ttft_ms),
        "total_p50": statistics.median(total_ms),
    }


async def run(args: argparse.Namespace) -> str:
    engine = await Engine.start(
        EngineConfig(model_id=args.model, path=args.models_dir / args.model, max_model_len=args.max_model_len)
    )
    try:
        rows = [
            (name, await measure(engine, messages, args.repeats, args.requests)) for name, messages in SHAPES.items()
        ]
    finally:
        await engine.shutdown()
    lines = [
        f"# Rendered-prompt cache: what a hit would save ({args.model}, vLLM in-process on CPU)",
        "",
        f"{args.repeats} renders per shape; {args.requests} requests per shape (16 tokens, temperature 0, prefix cache "
        "warm). Times in ms, p50 unless noted.",
        "",
        "| prompt | tokens | render + tokenize | (p99) | cache hit instead | time to first token | whole request "
        "| saved per request |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows:
        saved = r["render_p50"] - r["hit_p50"]
        lines.append(
            f"| {name} | {r['prompt_tokens']} | {r['render_p50']:.3f} | {r['render_p99']:.3f} | {r['hit_p50']:.4f} "
            f"| {r['ttft_p50']:.1f} | {r['total_p50']:.1f} | {saved:.3f} ms = {saved / r['total_p50']:.1%} of the "
            f"request, {saved / r['ttft_p50']:.1%} of TTFT |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.prompt_cache", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--models-dir", type=Path, default=Path.home() / ".cache/ferry/models")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--out", type=Path, help=OUT_HELP)
    args = p.parse_args(argv)
    report = asyncio.run(run(args))
    emit_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
