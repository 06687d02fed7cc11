"""``--compare-batching``: the batcher's profiles against no batching, side by side in one run, on the real engine.

Each configuration gets a private platform (tests/e2e/platform.py: its own topics, database and ports) serving one
model, and the same load through the ingress:
- ``no-batching``: the worker's engine runs one sequence at a time (FERRY_WORKER_MAX_NUM_SEQS=1);
- ``adaptive``: the engine's default, the batcher's default mode;
- ``latency``, ``throughput``, ``cost``: the engine's default, every request under that batcher profile
  (FERRY_BATCHER_DEFAULT_PROFILE) with its wait limit always applied (FERRY_BATCHER_WITHOUT_REPORTS=wait).
Then a low-load run (one request at a time) per configuration measures the wait the batcher adds, read from the
batcher's own spans (``ferry.batcher_wait_ms``: from reading a request to handing its batch on)."""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from benchmarks.bench.metrics import RequestResult, summarize
from benchmarks.bench.report import TargetRun
from benchmarks.bench.runner import Load, Target, run
from shared.runtime import run as run_event_loop

# Until workers publish WorkerStatusReported, the profiles' wait limits apply only with without_reports=wait (as if
# the workers were always saturated); "adaptive" is the default mode (dispatch at once while nothing says saturated).
CONFIGS: dict[str, dict[str, str]] = {
    "no-batching": {"FERRY_WORKER_MAX_NUM_SEQS": "1"},
    "adaptive": {},
    "latency": {"FERRY_BATCHER_DEFAULT_PROFILE": "latency", "FERRY_BATCHER_WITHOUT_REPORTS": "wait"},
    "throughput": {"FERRY_BATCHER_DEFAULT_PROFILE": "throughput", "FERRY_BATCHER_WITHOUT_REPORTS": "wait"},
    "cost": {"FERRY_BATCHER_DEFAULT_PROFILE": "cost", "FERRY_BATCHER_WITHOUT_REPORTS": "wait"},
}
CLAIMS = {"latency": "4-6x", "throughput": "15-20x", "cost": "25-30x"}


@dataclass
class BatchingRun:
    name: str
    run: TargetRun
    low_load: list[RequestResult]
    batcher_waits_ms: list[float]
    publish_ms: list[float]
    dispatch_reasons: dict[str, int]
    load_average: float
    """The machine's 1-minute load average when the configuration's runs ended (2 cores; other agents share them)."""


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _batcher_spans(path: Path, since_ns: int) -> tuple[list[float], list[float], dict[str, int]]:
    """Per dispatched request after ``since_ns``: the hold (read to batch closed) and the publish (acks=all) in ms;
    and the number of requests per dispatch reason."""
    waits: list[float] = []
    publishes: list[float] = []
    reasons: dict[str, int] = {}
    if not path.exists():
        return waits, publishes, reasons
    for line in path.read_text(errors="replace").splitlines():
        try:
            span = json.loads(line)
        except json.JSONDecodeError:
            continue
        if span.get("name") != "ferry.batcher.dispatch":
            continue
        attributes = span.get("attributes", {})
        started = span.get("start_time", "")
        if isinstance(started, str) and started and _iso_ns(started) < since_ns:
            continue
        if "ferry.batcher_wait_ms" in attributes:
            waits.append(float(attributes["ferry.batcher_wait_ms"]))
            publishes.append((_iso_ns(span["end_time"]) - _iso_ns(started)) / 1e6)
        reason = attributes.get("ferry.batch_reason", "?")
        reasons[reason] = reasons.get(reason, 0) + 1
    return waits, publishes, reasons


def _iso_ns(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1e9)


def run_all(
    model: str, load: Load, low_load_prompts: int, models_dir: Path, slos: dict[str, float], reverse: bool = False
) -> list[BatchingRun]:
    from tests.e2e.platform import start_platform, stop_platform  # the test platform starter, reused

    low = replace(load, requests=load.requests[:low_load_prompts], offsets=[0.0] * low_load_prompts, concurrency=1)
    runs = []
    order = list(CONFIGS.items())
    for name, env in reversed(order) if reverse else order:
        workdir = Path(tempfile.mkdtemp(prefix=f"bench-batching-{name}-"))
        print(f"[{name}] starting a private platform for {model} ...", file=sys.stderr)
        platform = start_platform(workdir, models_dir, models=(model,), extra_env=env)
        try:
            target = Target(name, platform.base_url + "/v1", model, platform.api_key)
            results, started_at, duration = run_event_loop(run(target, load))
            summary = summarize(results, duration, slos)
            since_ns = time.time_ns()
            low_results, _, _ = run_event_loop(run(replace(target, name=f"{name}-low-load"), low))
            waits, publishes, _ = _batcher_spans(platform.traces("batcher"), since_ns)
            _, _, reasons = _batcher_spans(platform.traces("batcher"), 0)
            load_average = os.getloadavg()[0]
        finally:
            stop_platform(platform)
        runs.append(
            BatchingRun(
                name,
                TargetRun(name, target.base_url, summary, results, started_at),
                low_results,
                waits,
                publishes,
                reasons,
                load_average,
            )
        )
    return runs


def markdown(runs: list[BatchingRun]) -> str:
    runs = sorted(runs, key=lambda r: list(CONFIGS).index(r.name))
    base = next(r for r in runs if r.name == "no-batching").run.summary
    lines = [
        "## Batching profiles vs no batching",
        "",
        "| configuration | req/s | output tok/s | speed-up (req/s) vs no batching | design claim | E2E p50 (ms) | "
        "E2E p95 (ms) | TTFT p50 (ms) | low load: batcher hold p50 / p95 (ms) | low load: batch publish p50 (ms) | "
        "requests by dispatch reason | load average |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        s = r.run.summary
        e2e = [(x.ended_at - x.started_at) * 1000 for x in r.run.results if x.ok]
        ttft = [x.ttft * 1000 for x in r.run.results if x.ok and x.ttft is not None]
        speedup = s.request_throughput / base.request_throughput if base.request_throughput else float("nan")
        waits = r.batcher_waits_ms
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(r.dispatch_reasons.items()))
        lines.append(
            f"| {r.name} | {s.request_throughput:.2f} | {s.output_throughput:.1f} | {speedup:.2f}x | "
            f"{CLAIMS.get(r.name, '-')} | {_percentile(e2e, 0.5):.0f} | {_percentile(e2e, 0.95):.0f} | "
            f"{_percentile(ttft, 0.5):.0f} | {_percentile(waits, 0.5):.2f} / {_percentile(waits, 0.95):.2f} "
            f"(n={len(waits)}) | {_percentile(r.publish_ms, 0.5):.2f} | {reasons} | {r.load_average:.1f} |"
        )
        if s.failed:
            lines.append(f"|  ↳ {r.name} failures | {s.failures} | | | | | | | | | | |")
    low_e2e = {
        r.name: statistics.median([(x.ended_at - x.started_at) * 1000 for x in r.low_load if x.ok] or [float("nan")])
        for r in runs
    }
    lines += ["", "Low load (one request at a time), E2E median (ms): "]
    lines.append(", ".join(f"{k} {v:.0f}" for k, v in low_e2e.items()))
    return "\n".join(lines) + "\n"
