"""What JSON output (response_format) costs in the worker's engine. ``python -m benchmarks.json_output``

Runs the same chat prompt on the worker's own engine adapter (services/worker/engine.py, vLLM in-process) in rounds,
each round sending one request of every kind back to back, so that the machine's load falls on all kinds alike:
- free text (no response_format);
- json_object;
- json_schema with a schema the engine has not seen (its grammar is compiled for this request);
- json_schema with the same schema every time.
Reports, per kind, the time to the first token and the time per further token (p50 over the rounds), and whether the
outputs that finished with ``stop`` parse as JSON. The first JSON request after start-up sets up the grammar backend;
it is timed apart. Prints a Markdown report (and writes it with --out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import OUT_HELP, emit_report
from services.worker.engine import Engine, EngineConfig
from shared.contracts import ChatMessage, ResponseFormat, SamplingParams

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        "population": {"type": "integer", "minimum": 0},
    },
    "required": ["name", "country", "population"],
    "additionalProperties": False,
}
QUESTION = "Describe Paris in JSON with keys name, country and population."


def response_format(kind: str, round_no: int) -> ResponseFormat | None:
    if kind == "free text":
        return None
    if kind == "json_object":
        return ResponseFormat(type="json_object")
    # a title the engine has not seen makes the schema new to its grammar cache without changing what it allows
    schema = SCHEMA | {"title": f"city-{round_no}-{time.monotonic_ns()}"} if kind == "json_schema, new" else SCHEMA
    return ResponseFormat(type="json_schema", json_schema=schema)


KINDS = ("free text", "json_object", "json_schema, new", "json_schema, same")


@dataclass
class Timings:
    first_token_ms: list[float] = field(default_factory=list)
    per_token_ms: list[float] = field(default_factory=list)
    finished: int = 0  # outputs that ended with finish reason stop
    parsed: int = 0  # of those, how many parse as JSON


async def timed(engine: Engine, prompt: str, sampling: SamplingParams, into: Timings | None) -> None:
    started = time.perf_counter()
    first = None
    tokens = 0
    text = ""
    finish = None
    async for step in engine.generate(f"bench-{time.monotonic_ns()}", prompt, sampling):
        if first is None and step.new_tokens:
            first = time.perf_counter()
        tokens += step.new_tokens
        text += step.text
        finish = step.finish_reason or finish
    ended = time.perf_counter()
    if into is None or first is None:
        return
    into.first_token_ms.append((first - started) * 1000)
    if tokens > 1:
        into.per_token_ms.append((ended - first) * 1000 / (tokens - 1))
    if finish == "stop":
        into.finished += 1
        try:
            json.loads(text)
            into.parsed += 1
        except json.JSONDecodeError:
            pass


async def run(args: argparse.Namespace) -> str:
    engine = await Engine.start(
        EngineConfig(model_id=args.model, path=args.models_dir / args.model, max_model_len=args.max_model_len)
    )
    try:
        prompt = engine.render_prompt([ChatMessage(role="user", content=QUESTION)])

        def sampling(kind: str, round_no: int) -> SamplingParams:
            return SamplingParams(
                max_tokens=args.max_tokens, temperature=0, response_format=response_format(kind, round_no)
            )

        await timed(engine, prompt, sampling("free text", 0), None)  # warms the engine
        setup = Timings()
        await timed(engine, prompt, sampling("json_object", 0), setup)  # the grammar backend's first use
        results = {kind: Timings() for kind in KINDS}
        for round_no in range(args.rounds):
            for kind in KINDS:
                await timed(engine, prompt, sampling(kind, round_no + 1), results[kind])
    finally:
        await engine.shutdown()
    base = results["free text"]
    lines = [
        f"# JSON output: what response_format costs ({args.model}, vLLM in-process on CPU)",
        "",
        f"{args.rounds} rounds, each sending every kind once, back to back; temperature 0, at most {args.max_tokens} "
        f'tokens. Prompt: "{QUESTION}" Times are p50 over the rounds.',
        "",
        "| output | first token (ms) | vs free text | per further token (ms) | vs free text | ended with stop "
        "| of those, parse as JSON |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, t in results.items():
        first, per_token = statistics.median(t.first_token_ms), statistics.median(t.per_token_ms)
        base_first, base_per_token = statistics.median(base.first_token_ms), statistics.median(base.per_token_ms)
        lines.append(
            f"| {kind} | {first:.1f} | {first / base_first:.2f}x | {per_token:.1f} | {per_token / base_per_token:.2f}x "
            f"| {t.finished}/{args.rounds} | {t.parsed}/{t.finished} |"
        )
    lines += [
        "",
        f"The first JSON request after start-up, which also set up the grammar backend: first token after "
        f"{setup.first_token_ms[0]:.1f} ms.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.json_output", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--models-dir", type=Path, default=Path.home() / ".cache/ferry/models")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--out", type=Path, help=OUT_HELP)
    args = p.parse_args(argv)
    emit_report(asyncio.run(run(args)), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
