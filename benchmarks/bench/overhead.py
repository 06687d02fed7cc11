"""``--overhead``: the time the platform adds to a stream, against the same vLLM engine called directly.

One run starts a private platform from this checkout (tests/e2e/platform.py: its own topics, database and ports, one
worker for the model, the safety stage, the batcher, the ingress) and vLLM's OpenAI server on the same model folder,
configured as the worker configures its engine. For each concurrency (1, 16 and 64 streams by default) it sends the
same prompts to ferry, to vLLM's server and to the engine in this process (ferry's engine adapter, no HTTP: the
floor), ferry first at one step and last at the next, and reports time to first token and time per output token at
p50 and p99 for each, and ferry's difference with each baseline: the added time. The services' spans of each ferry
run give the hop-by-hop breakdown (benchmarks.bench.hops), and /proc the CPU time each of ferry's services and its
Kafka, PostgreSQL and Redis spent on the run, against vLLM's server on the same requests (benchmarks.bench.cpu).

With ``paced_s`` a first step sends one request every ``paced_s`` seconds (an open loop: every target gets its
requests at the same instants, whether or not the one before has finished). At one stream in a closed loop each
request is sent as the last one ends, so the engine in process gets its requests back to back, while ferry's engine
sits idle as each request crosses the platform, and an engine that has been idle answers later (a few ms here, see
benchmarks/README.md). Paced, every target's engine is idle before each request, as it is for users who do not send
the moment an answer ends, so the added time is the platform's own."""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.bench import prompts
from benchmarks.bench.cpu import CpuMeter, infra_pids
from benchmarks.bench.hops import hop_durations
from benchmarks.bench.hops import table as hop_table
from benchmarks.bench.metrics import Summary, summarize
from benchmarks.bench.runner import Load, Target, run
from benchmarks.bench.targets import run_in_process, vllm_server
from shared.runtime import run as run_event_loop
from shared.telemetry import CONSOLE_EXPORT_DELAY_MS

WARMUP_PROMPTS = 8


BASELINES = ("vllm-direct", "engine-in-process")


@dataclass
class Step:
    concurrency: int
    """Concurrent streams (closed loop); 1 for a paced step."""
    summaries: dict[str, Summary]
    """ferry's and each baseline's, by name."""
    hops: str
    order: list[str]
    load_average: float
    cpu_seconds: dict[str, dict[str, float]]
    """CPU seconds spent during a target's run, by target (ferry, vllm-direct), then by component."""
    paced_s: float | None = None
    """Seconds between requests sent in an open loop; None: ``concurrency`` streams, each request as the last ends."""
    round: int | None = None
    """Which of several rounds of the same loads (bench --rounds); None: one round only."""

    @property
    def load(self) -> str:
        return load_name(self.concurrency, self.paced_s)

    @property
    def label(self) -> str:
        return self.load + (f", round {self.round}" if self.round is not None else "")

    @property
    def ferry(self) -> Summary:
        return self.summaries["ferry"]


def load_name(concurrency: int, paced_s: float | None) -> str:
    return f"one request every {paced_s:g} s" if paced_s is not None else f"{concurrency} streams"


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
    paced_s: float | None = None,
    rounds: int = 1,
) -> list[Step]:
    from tests.e2e.platform import start_platform, stop_platform  # the test platform starter, reused

    workdir = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    print(f"starting a private platform for {model} in {workdir} ...", file=sys.stderr)
    platform = start_platform(workdir, models_dir, models=(model,), extra_env=extra_env)
    steps: list[Step] = []
    try:
        with vllm_server(model, model_path, max_model_len, out / "vllm-server.log") as vllm:
            ferry = Target("ferry", platform.base_url + "/v1", model, platform.api_key)
            components = {
                "ferry": {s.name: s.process.pid for s in platform.services if s.process} | infra_pids(),
                "vllm-direct": {"vLLM server": vllm.pid} if vllm.pid else {},
            }
            warm_up = prompts.synthetic(WARMUP_PROMPTS, input_words, output_tokens, seed=99)
            for target in (ferry, vllm):
                run_event_loop(run(target, Load(warm_up, [0.0] * WARMUP_PROMPTS, 4, show_progress=False)))
            loads = ([(1, paced_s)] if paced_s is not None else []) + [(c, None) for c in concurrencies]
            plan = [(r, concurrency, interval) for r in range(1, rounds + 1) for concurrency, interval in loads]
            for i, (round_number, concurrency, interval) in enumerate(plan):
                count = max(64, 2 * concurrency)
                # new prompts at every step: ferry's engine and vLLM's server keep their prefix caches from one round
                # to the next, where the engine in process starts afresh
                requests = prompts.synthetic(count, input_words, output_tokens, seed=i)
                if interval is None:
                    load = Load(requests, [0.0] * count, concurrency, show_progress=False)
                else:
                    load = Load(requests, [n * interval for n in range(count)], None, show_progress=False)
                runs = {
                    "ferry": lambda load=load: run(ferry, load),
                    "vllm-direct": lambda load=load: run(vllm, load),
                    "engine-in-process": lambda load=load: run_in_process(model, model_path, max_model_len, load),
                }
                order = list(runs) if i % 2 == 0 else list(reversed(runs))
                summaries: dict[str, Summary] = {}
                window = (0.0, 0.0)
                cpu_seconds: dict[str, dict[str, float]] = {}
                for name in order:
                    started = time.time()
                    meter = CpuMeter(components.get(name, {}))
                    meter.start()
                    results, _, duration = run_event_loop(runs[name]())
                    if name in components:
                        cpu_seconds[name] = meter.stop()
                    summaries[name] = summarize(results, duration)
                    if name == "ferry":
                        window = (started, time.time())
                    print(
                        f"{load_name(concurrency, interval)}, {name}: {summaries[name].completed}/{count}",
                        file=sys.stderr,
                    )
                time.sleep(2 * CONSOLE_EXPORT_DELAY_MS / 1000)  # the last spans reach the trace files
                hops = hop_table(_spans(workdir, window))
                steps.append(
                    Step(
                        concurrency,
                        summaries,
                        hops,
                        order,
                        os.getloadavg()[0],
                        cpu_seconds,
                        interval,
                        round_number if rounds > 1 else None,
                    )
                )
    finally:
        stop_platform(platform)
    return steps


def markdown(steps: list[Step], command: str) -> str:
    lines = [
        "# Platform overhead: ferry vs the same engine called directly",
        "",
        "```",
        command,
        "```",
        "",
        "Added = ferry minus the baseline, percentile by percentile. TTFT counts to the first chunk that carries text;",
        "TPOT is (end - first token) / (tokens - 1) per request. Baselines: `vllm-direct` is vLLM's own OpenAI server",
        "on the same model folder; `engine-in-process` is the engine called in the bench process (no HTTP at all).",
        "",
        "| load | baseline | TTFT p50 ferry / base / added (ms) | TTFT p99 ferry / base / added (ms)"
        " | TPOT p50 ferry / base / added (ms) | TPOT p99 ferry / base / added (ms) | completed (ferry, base) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in steps:
        for baseline in BASELINES:
            base = s.summaries[baseline]
            cells = []
            for metric, q in (("ttft", "median"), ("ttft", "p99"), ("tpot", "median"), ("tpot", "p99")):
                ours, theirs = getattr(s.ferry, metric), getattr(base, metric)
                if ours is None or theirs is None:
                    cells.append("n/a")
                    continue
                a, b = getattr(ours, q), getattr(theirs, q)
                cells.append(f"{a:.1f} / {b:.1f} / {a - b:+.1f}")
            done = f"{s.ferry.completed}, {base.completed} of {s.ferry.completed + s.ferry.failed}"
            lines.append(f"| {s.label} | {baseline} | {' | '.join(cells)} | {done} |")
    lines += rounds_table(steps)
    lines += ["", "Run order and the machine's 1-minute load average (2 shared cores) after each step:", ""]
    lines += [f"- {s.label}: {', '.join(s.order)}; load average {s.load_average:.1f}" for s in steps]
    lines.append("")
    lines += cpu_table(steps)
    for s in steps:
        lines += [f"## Hops at {s.label} (ferry run, from the services' spans)", "", s.hops]
    return "\n".join(lines) + "\n"


def rounds_table(steps: list[Step]) -> list[str]:
    """With several rounds: each load's added TTFT, round by round, and its median over the rounds."""
    if not any(s.round is not None for s in steps):
        return []
    lines = [
        "",
        "## Added time to first token, round by round (ms)",
        "",
        "| load | baseline | added p50 per round | median | added p99 per round | median |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for load in dict.fromkeys(s.load for s in steps):
        same = [s for s in steps if s.load == load and s.ferry.ttft is not None]
        for baseline in BASELINES:
            cells = []
            for q in ("median", "p99"):
                added = [
                    getattr(s.ferry.ttft, q) - getattr(theirs, q)
                    for s in same
                    if (theirs := s.summaries[baseline].ttft) is not None
                ]
                values = ", ".join(f"{a:+.1f}" for a in added) or "n/a"
                cells += [values, f"{statistics.median(added):+.1f}" if added else "n/a"]
            lines.append(f"| {load} | {baseline} | {' | '.join(cells)} |")
    return lines


def cpu_table(steps: list[Step]) -> list[str]:
    """CPU milliseconds per completed request: ferry's total and each of its components, and vLLM's server's."""
    if not any(s.cpu_seconds.get("ferry") for s in steps):
        return []
    components = sorted({c for s in steps for c in s.cpu_seconds.get("ferry", {})}, key=_component_order)
    lines = [
        "## CPU time per completed request (ms, all cores, from /proc)",
        "",
        "Each component counts its processes, their threads and children (a worker's or vLLM server's EngineCore)."
        " Kafka, PostgreSQL and Redis count whatever they did during ferry's run. The worker includes its engine,"
        " whose OpenMP threads also spin while they wait for work.",
        "",
        f"| load | ferry total | {' | '.join(components)} | ferry without the worker | vLLM server"
        " | ferry / vLLM server |",
        "|" + " --- |" * (len(components) + 5),
    ]
    for s in steps:
        ferry = s.cpu_seconds.get("ferry", {})
        per_request = {c: 1000 * v / max(s.ferry.completed, 1) for c, v in ferry.items()}
        total = sum(per_request.values())
        platform_part = sum(v for c, v in per_request.items() if not c.startswith("worker"))
        vllm_seconds = sum(s.cpu_seconds.get("vllm-direct", {}).values())
        vllm = 1000 * vllm_seconds / max(s.summaries["vllm-direct"].completed, 1) if vllm_seconds else None
        cells = [f"{per_request[c]:.1f}" if c in per_request else "n/a" for c in components]
        ratio = f"{total / vllm:.2f}" if vllm else "n/a"
        vllm_cell = f"{vllm:.1f}" if vllm else "n/a"
        lines.append(f"| {s.label} | {total:.1f} | {' | '.join(cells)} | {platform_part:.1f} | {vllm_cell} | {ratio} |")
    return [*lines, ""]


def _component_order(name: str) -> tuple[int, str]:
    order = ("ingress", "safety", "batcher", "worker", "kafka", "postgres", "redis")
    return next((i for i, prefix in enumerate(order) if name.startswith(prefix)), len(order)), name


def write(out: Path, steps: list[Step], command: str) -> Path:
    data = {
        "command": command,
        "machine": f"{os.cpu_count()} cores",
        "steps": [
            {
                "concurrency": s.concurrency,
                "paced_s": s.paced_s,
                "round": s.round,
                "order": s.order,
                "load_average": s.load_average,
                "cpu_seconds": s.cpu_seconds,
                **{name: summary.to_dict() for name, summary in s.summaries.items()},
            }
            for s in steps
        ],
    }
    (out / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    path = out / "report.md"
    path.write_text(markdown(steps, command))
    return path
