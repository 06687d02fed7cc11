"""Writes a run's report: JSON (configuration, summaries, every request), a markdown summary and PNG plots."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.bench.metrics import LATENCY_METRICS, RequestResult, Summary, ratios, summarize

LATENCY_NAMES = {
    "ttft": "time to first token",
    "tpot": "time per output token",
    "itl": "inter-token latency",
    "e2el": "end-to-end latency",
}


@dataclass
class TargetRun:
    """One target's part of a run."""

    name: str
    base_url: str
    summary: Summary
    results: list[RequestResult]
    started_at: float


def write(out_dir: Path, config: dict[str, Any], runs: list[TargetRun]) -> dict[str, Path]:
    """Writes report.json, report.md, latency_cdf.png and throughput.png into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "report.json",
        "markdown": out_dir / "report.md",
        "latency_cdf": out_dir / "latency_cdf.png",
        "throughput": out_dir / "throughput.png",
    }
    comparison = ratios(runs[0].summary, runs[1].summary) if len(runs) == 2 else None
    paths["json"].write_text(
        json.dumps(
            {
                "config": config,
                "targets": [
                    {
                        "name": r.name,
                        "base_url": r.base_url,
                        "summary": r.summary.to_dict(),
                        "requests": [_request_json(x, r.started_at) for x in r.results],
                    }
                    for r in runs
                ],
                "ratios": comparison,
            },
            indent=2,
        )
    )
    paths["markdown"].write_text(markdown(config, runs, comparison))
    _plot_latency_cdfs(runs, paths["latency_cdf"])
    _plot_throughput(runs, paths["throughput"])
    return paths


@dataclass
class Round:
    """One run of both targets of a comparison, in the order they ran."""

    order: list[str]
    runs: dict[str, TargetRun]


def pooled(name: str, rounds: list[Round], slos_ms: dict[str, float] | None = None) -> TargetRun:
    """A target's runs of every round as one: its requests together, over the sum of its durations."""
    parts = [r.runs[name] for r in rounds]
    results = [x for part in parts for x in part.results]
    duration = sum(part.summary.duration_s for part in parts)
    return TargetRun(name, parts[0].base_url, summarize(results, duration, slos_ms), results, parts[0].started_at)


def round_ratios(rounds: list[Round], first: str, second: str) -> dict[str, Any]:
    """Each round's output throughput of the two targets and their ratio (``first`` / ``second``), and the median
    ratio: on a shared machine a target's speed drifts between runs by more than the difference measured, so a pair
    run side by side several times, the order swapped, says more than one pair."""
    rows = []
    for index, played in enumerate(rounds, start=1):
        a, b = played.runs[first].summary, played.runs[second].summary
        rows.append(
            {
                "round": index,
                "order": played.order,
                "output_throughput": {first: a.output_throughput, second: b.output_throughput},
                "ttft_median_ms": {first: a.ttft.median if a.ttft else None, second: b.ttft.median if b.ttft else None},
                "ratio": a.output_throughput / b.output_throughput if b.output_throughput else None,
            }
        )
    ratios_seen = [r["ratio"] for r in rows if r["ratio"] is not None]
    return {"rounds": rows, "median_ratio": statistics.median(ratios_seen) if ratios_seen else None}


def rounds_markdown(figures: dict[str, Any], first: str, second: str) -> str:
    lines = [
        "",
        f"## Rounds: the pair run {len(figures['rounds'])} times, the order swapped each round",
        "",
        f"The tables above pool every round. Ratio: output throughput, {first} / {second}, in the same round.",
        "",
        f"| round | order | {first} output tok/s | {second} output tok/s | ratio | TTFT p50 {first} / {second} (ms) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in figures["rounds"]:
        throughput, ttft = row["output_throughput"], row["ttft_median_ms"]
        ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
        ttfts = " / ".join(f"{ttft[n]:.1f}" if ttft[n] is not None else "-" for n in (first, second))
        lines.append(
            f"| {row['round']} | {', '.join(row['order'])} | {throughput[first]:.1f} | {throughput[second]:.1f} | "
            f"{ratio} | {ttfts} |"
        )
    seen = [row["ratio"] for row in figures["rounds"] if row["ratio"] is not None]
    if seen:
        lines += ["", f"Median ratio: {figures['median_ratio']:.2f} (lowest {min(seen):.2f}, highest {max(seen):.2f})."]
    return "\n".join(lines) + "\n"


def _request_json(result: RequestResult, started_at: float) -> dict[str, Any]:
    raw = asdict(result)
    raw["started_at"] = result.started_at - started_at
    raw["ended_at"] = result.ended_at - started_at
    raw["chunk_times"] = [t - started_at for t in result.chunk_times]
    return raw


def markdown(config: dict[str, Any], runs: list[TargetRun], comparison: dict[str, float] | None) -> str:
    names = [r.name for r in runs]
    lines = ["# Benchmark report", "", "```", " ".join(config.get("command", [])), "```", ""]
    lines += [f"- {k}: {v}" for k, v in config.items() if k != "command"]
    lines += ["", "| metric | " + " | ".join(names) + (" | ratio (first / second) |" if comparison else " |")]
    lines += ["| --- |" + " --- |" * (len(names) + (1 if comparison else 0))]

    def row(label: str, values: list[str], ratio_key: str | None = None) -> None:
        ratio = ""
        if comparison is not None:
            ratio = f" {comparison[ratio_key]:.2f} |" if ratio_key and ratio_key in comparison else " |"
        lines.append(f"| {label} | " + " | ".join(values) + " |" + ratio)

    summaries = [r.summary for r in runs]
    row("completed / failed", [f"{s.completed} / {s.failed}" for s in summaries])
    row("duration (s)", [f"{s.duration_s:.2f}" for s in summaries])
    row("request throughput (req/s)", [f"{s.request_throughput:.2f}" for s in summaries], "request_throughput")
    row("output throughput (tok/s)", [f"{s.output_throughput:.1f}" for s in summaries], "output_throughput")
    row(
        "total token throughput (tok/s)",
        [f"{s.total_token_throughput:.1f}" for s in summaries],
        "total_token_throughput",
    )
    if any(s.goodput is not None for s in summaries):
        row("goodput (req/s)", [f"{s.goodput:.2f}" if s.goodput is not None else "-" for s in summaries])
    for metric in LATENCY_METRICS:
        for stat in ("mean", "median", "p90", "p99"):
            values = []
            for s in summaries:
                dist = getattr(s, metric)
                values.append(f"{getattr(dist, stat):.1f}" if dist else "-")
            row(f"{LATENCY_NAMES[metric]} {stat} (ms)", values, f"{metric}.{stat}")
    for r in runs:
        if r.summary.failures:
            lines.append(f"\nFailures of {r.name}: " + ", ".join(f"{k}: {v}" for k, v in r.summary.failures.items()))
    return "\n".join(lines) + "\n"


def _plot_latency_cdfs(runs: list[TargetRun], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    pickers = {
        "ttft": lambda r: [r.ttft] if r.ttft is not None else [],
        "itl": lambda r: r.itls,
        "e2el": lambda r: [r.e2el],
    }
    for axis, (metric, pick) in zip(axes, pickers.items(), strict=True):
        for run in runs:
            values = sorted(v * 1000 for x in run.results if x.ok for v in pick(x))
            if values:
                axis.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=run.name)
        axis.set_title(f"{LATENCY_NAMES[metric]} CDF")
        axis.set_xlabel("ms")
        axis.set_ylabel("fraction of requests" if metric != "itl" else "fraction of gaps")
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_throughput(runs: list[TargetRun], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(8, 4))
    for run in runs:
        # output tokens per second, each request's tokens spread over its own chunks
        buckets: dict[int, float] = {}
        for x in run.results:
            if x.ok and x.chunk_times:
                per_chunk = x.output_tokens / len(x.chunk_times)
                for t in x.chunk_times:
                    second = int(t - run.started_at)
                    buckets[second] = buckets.get(second, 0.0) + per_chunk
        if buckets:
            seconds = range(max(buckets) + 1)
            axis.plot(list(seconds), [buckets.get(s, 0.0) for s in seconds], label=run.name, drawstyle="steps-post")
    axis.set_title("output throughput over time")
    axis.set_xlabel("seconds since start")
    axis.set_ylabel("tokens/s")
    axis.grid(alpha=0.3)
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
