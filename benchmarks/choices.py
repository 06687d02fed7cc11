"""What a request for several choices (`n`) costs against the same choices asked for one request each, through a
running platform. ``python -m benchmarks.choices``

Each round sends, back to back in an order that turns with the round:
- one streamed request with ``n`` choices and seed s;
- ``n`` streamed requests at once, with seeds s, s + 1, ..., which generate the very same choices (choice i of a
  request for several is sampled with its seed + i), so both do the same work;
- one streamed request for one choice, the floor.
Reports, per kind, the time to the first text and to the end of the last choice (p50 and worst over the rounds), the
tokens generated, and how many times the safety stage screened (its ``ferry_safety_screen_seconds_count``; screenings
of the n copies of a prompt that arrive together are one). Prints a Markdown report (and writes it with --out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks import OUT_HELP, emit_report

KINDS = ("n choices, one request", "one request per choice", "one choice")


@dataclass
class Timings:
    first_text_ms: list[float] = field(default_factory=list)
    done_ms: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    screenings: list[float] = field(default_factory=list)


async def streamed(client: httpx.AsyncClient, body: dict[str, object], started: float) -> tuple[float | None, int]:
    """Streams one request; returns when its first text came (ms after ``started``) and its completion tokens."""
    first, tokens = None, 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = (time.perf_counter() - started) * 1000
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first, tokens


async def screenings(metrics_url: str | None) -> float:
    if metrics_url is None:
        return 0.0
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(metrics_url)).text
    found = re.search(r"^ferry_safety_screen_seconds_count (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def one_kind(client: httpx.AsyncClient, kind: str, args: argparse.Namespace, seed: int, into: Timings) -> None:
    base = {
        "model": args.model,
        "messages": [{"role": "user", "content": f"Tell me a short story about a ferry, take {seed}."}],
        "max_tokens": args.max_tokens,
        "temperature": 1.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if kind == KINDS[0]:
        bodies = [base | {"seed": seed, "n": args.n}]
    elif kind == KINDS[1]:
        bodies = [base | {"seed": seed + i} for i in range(args.n)]
    else:
        bodies = [base | {"seed": seed}]
    before = await screenings(args.safety_metrics)
    started = time.perf_counter()
    results = await asyncio.gather(*(streamed(client, body, started) for body in bodies))
    into.done_ms.append((time.perf_counter() - started) * 1000)
    into.first_text_ms.append(min(first for first, _ in results if first is not None))
    into.tokens.append(sum(tokens for _, tokens in results))
    await asyncio.sleep(0.5)  # the stage's counter is read after its last screening of the round
    into.screenings.append(await screenings(args.safety_metrics) - before)


async def run(args: argparse.Namespace) -> str:
    timings = {kind: Timings() for kind in KINDS}
    headers = {"authorization": f"Bearer {args.key_file.read_text().strip()}"}
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=300) as client:
        await one_kind(client, KINDS[2], args, 0, Timings())  # warm-up, not counted
        for round_no in range(args.rounds):
            turned = KINDS[round_no % len(KINDS) :] + KINDS[: round_no % len(KINDS)]
            seed = 1000 * (round_no + 1)  # prompts differ per round, so no cache of any kind answers
            for kind in turned:
                await one_kind(client, kind, args, seed, timings[kind])
    return markdown(args, timings)


def markdown(args: argparse.Namespace, timings: dict[str, Timings]) -> str:
    per_request = timings[KINDS[1]]
    lines = [
        f"# Several choices in one request (n = {args.n}) against one request per choice",
        "",
        f"`python -m benchmarks.choices --model {args.model} --n {args.n} --rounds {args.rounds} "
        f"--max-tokens {args.max_tokens}` against a running platform ({args.url}); temperature 1, a new prompt each "
        "round, the kinds back to back in an order that turns with the round. Times are p50 (worst) over the rounds.",
        "",
        "| kind | first text (ms) | last choice done (ms) | tokens per round | safety screenings per round | "
        "done vs one request per choice |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind in KINDS:
        t = timings[kind]
        ratio = statistics.median(t.done_ms) / statistics.median(per_request.done_ms)
        lines.append(
            f"| {kind} | {statistics.median(t.first_text_ms):.0f} ({max(t.first_text_ms):.0f}) "
            f"| {statistics.median(t.done_ms):.0f} ({max(t.done_ms):.0f}) | {statistics.median(t.tokens):.0f} "
            f"| {statistics.median(t.screenings):.0f} | {ratio:.2f}x |"
        )
    same = timings[KINDS[0]].tokens == per_request.tokens
    lines += [
        "",
        "The two ways of asking for the choices generated "
        + ("the same tokens in every round." if same else "different token counts in some rounds: "
           f"{timings[KINDS[0]].tokens} against {per_request.tokens}."),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.choices", description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--key-file", type=Path, default=Path(".state/dev-api-key"))
    p.add_argument("--safety-metrics", default="http://127.0.0.1:8040/metrics", help="'' to skip counting screenings")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--out", type=Path, help=OUT_HELP)
    args = p.parse_args(argv)
    args.safety_metrics = args.safety_metrics or None
    emit_report(asyncio.run(run(args)), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
