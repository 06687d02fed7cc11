"""``--overhead``: the time the platform adds to a stream, against the same vLLM engine behind vLLM's own server.

One run starts a private platform from this checkout (tests/e2e/platform.py: its own topics, database and ports, one
worker for the model, the safety stage, the batcher, the ingress) and vLLM's OpenAI server on the same model folder,
configured as the worker configures its engine. For each concurrency (1, 16 and 64 streams by default) it warms both
up, then sends the same prompts to ferry and to vLLM, alternating which goes first, and reports time to first token
and time per output token at p50 and p99 for both, and their difference: the added time. The services' spans of each
ferry run give the hop-by-hop breakdown (benchmarks.bench.hops)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.bench import prompts
from benchmarks.bench.hops import hop_durations
from benchmarks.bench.hops import table as hop_table
from benchmarks.bench.metrics import Summary, summarize
from benchmarks.bench.runner import Load, Target, run
from benchmarks.bench.targets import vllm_server

WARMUP_PROMPTS = 8


@dataclass
class Step:
    concurrency: int
    ferry: Summary
    vllm: Summary
    hops: str
    order: tuple[str, str]
    load_average: float


def _spans(workdir: Path, window: tuple[float, float]) -> dict[str, list[float]]:
    spans = []
    for path in sorted(workdir.glob("*.traces.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                spans.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line being written when the run ended
    return hop_durations(spans, window)


def run_overhead(
    model: str,
    model_path: Path,
    max_model_len: int,
    concurrencies: list[int],
    input_words: tuple[int, int],
    output_tokens: tuple[int, int],
    models_dir: Path,
    out: Path,
    extra_env: dict[str, str] | None = None,
) -> list[Step]:
    from tests.e2e.platform import start_platform, stop_platform  # the test platform starter, reused

    workdir = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    print(f"starting a private platform for {model} in {workdir} ...", file=sys.stderr)
    platform = start_platform(workdir, models_dir, models=(model,), extra_env=extra_env)
    steps: list[Step] = []
    try:
        with vllm_server(model, model_path, max_model_len, out / "vllm-server.log") as vllm:
            ferry = Target("ferry", platform.base_url + "/v1", model, platform.api_key)
            warm = Load(prompts.synthetic(WARMUP_PROMPTS, input_words, output_tokens, seed=99), [0.0] * 8, 4)
            for target in (ferry, vllm):
                asyncio.run(run(target, replace(warm, show_progress=False)))
            for i, concurrency in enumerate(concurrencies):
                count = max(32, 2 * concurrency)
                requests = prompts.synthetic(count, input_words, output_tokens, seed=i)
                load = Load(requests, [0.0] * count, concurrency, show_progress=False)
                order = (ferry, vllm) if i % 2 == 0 else (vllm, ferry)
                summaries: dict[str, Summary] = {}
                window = (0.0, 0.0)
                for target in order:
                    started = time.time()
                    results, _, duration = asyncio.run(run(target, load))
                    summaries[target.name] = summarize(results, duration)
                    if target is ferry:
                        window = (started, time.time())
                    print(f"c={concurrency} {target.name}: {summaries[target.name].completed}/{count}", file=sys.stderr)
                time.sleep(1.0)  # the last spans reach the trace files
                steps.append(
                    Step(
                        concurrency,
                        summaries["ferry"],
                        summaries[vllm.name],
                        hop_table(_spans(workdir, window)),
                        (order[0].name, order[1].name),
                        os.getloadavg()[0],
                    )
                )
    finally:
        stop_platform(platform)
    return steps


def markdown(steps: list[Step], command: str) -> str:
    lines = [
        "# Platform overhead: ferry vs the same engine behind vLLM's own server",
        "",
        "```",
        command,
        "```",
        "",
        "Added = ferry minus vLLM, percentile by percentile. TTFT counts to the first chunk that carries text; TPOT",
        "is (end - first token) / (tokens - 1) per request.",
        "",
        "| streams | TTFT p50 ferry / vLLM / added (ms) | TTFT p99 ferry / vLLM / added (ms)"
        " | TPOT p50 ferry / vLLM / added (ms) | TPOT p99 ferry / vLLM / added (ms) | completed | load avg |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in steps:
        cells = []
        for metric, q in (("ttft", "median"), ("ttft", "p99"), ("tpot", "median"), ("tpot", "p99")):
            ours, theirs = getattr(s.ferry, metric), getattr(s.vllm, metric)
            if ours is None or theirs is None:
                cells.append("n/a")
                continue
            a, b = getattr(ours, q), getattr(theirs, q)
            cells.append(f"{a:.1f} / {b:.1f} / {a - b:+.1f}")
        done = f"{s.ferry.completed}+{s.vllm.completed} of {2 * (s.ferry.completed + s.ferry.failed)}"
        lines.append(f"| {s.concurrency} | {' | '.join(cells)} | {done} | {s.load_average:.1f} |")
    lines.append("")
    for s in steps:
        lines += [f"## Hops at {s.concurrency} streams (ferry run, from the services' spans)", "", s.hops]
    return "\n".join(lines) + "\n"


def write(out: Path, steps: list[Step], command: str) -> Path:
    data = {
        "command": command,
        "machine": f"{os.cpu_count()} cores",
        "steps": [
            {
                "concurrency": s.concurrency,
                "order": list(s.order),
                "load_average": s.load_average,
                "ferry": s.ferry.to_dict(),
                "vllm": s.vllm.to_dict(),
            }
            for s in steps
        ],
    }
    (out / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    path = out / "report.md"
    path.write_text(markdown(steps, command))
    return path
