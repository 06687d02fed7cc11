"""The response cache's benchmark: the same requests twice through the public API, first as misses (each request made
unique to the run, so nothing is cached yet), then as hits; latency of a hit against a miss for the same request."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import replace
from typing import Any

from benchmarks.bench.metrics import Distribution, RequestResult
from benchmarks.bench.prompts import BenchRequest

GOAL_REDUCTION = 0.95


def unique_to_run(requests: list[BenchRequest]) -> list[BenchRequest]:
    """Prefixes every request with one run id, so the first pass cannot hit entries of an earlier run."""
    nonce = uuid.uuid4().hex[:8]
    out = []
    for r in requests:
        first, *rest = r.messages
        out.append(replace(r, messages=[first | {"content": f"[run {nonce}] {first['content']}"}, *rest]))
    return out


def cache_comparison(miss: list[RequestResult], hit: list[RequestResult]) -> dict[str, Any]:
    """p50 and p99 of end-to-end latency and TTFT for each pass, the reduction a hit brings (1 - hit / miss), and what
    the cache said about every request (so a pass that did not hit shows up)."""
    figures: dict[str, Any] = {
        "cache_status": {
            "miss_pass": dict(Counter(r.cache for r in miss)),
            "hit_pass": dict(Counter(r.cache for r in hit)),
        }
    }
    for metric in ("e2el", "ttft"):
        for name, results in (("miss", miss), ("hit", hit)):
            samples = [v for r in results if r.ok and (v := getattr(r, metric)) is not None]
            dist = Distribution.of(samples)
            figures[f"{metric}.{name}"] = {"p50": dist.median, "p99": dist.p99} if dist else None
        m, h = figures[f"{metric}.miss"], figures[f"{metric}.hit"]
        figures[f"{metric}.reduction"] = (
            {stat: 1 - h[stat] / m[stat] for stat in ("p50", "p99")} if m and h and m["p50"] and m["p99"] else None
        )
    reduction = figures["e2el.reduction"]
    figures["goal"] = f"end-to-end latency reduced by at least {GOAL_REDUCTION:.0%} at p50 and p99"
    figures["goal_met"] = bool(reduction) and all(v >= GOAL_REDUCTION for v in reduction.values())
    return figures


def markdown(figures: dict[str, Any]) -> str:
    names = {"e2el": "end-to-end latency", "ttft": "time to first token"}
    lines = [
        "",
        "## Cache hit vs miss (same requests, same run)",
        "",
        "| metric | miss (ms) | hit (ms) | reduction |",
        "| --- | --- | --- | --- |",
    ]
    for metric, label in names.items():
        m, h, red = figures[f"{metric}.miss"], figures[f"{metric}.hit"], figures[f"{metric}.reduction"]
        for stat in ("p50", "p99"):
            lines.append(
                f"| {label} {stat} | {m[stat]:.1f} | {h[stat]:.1f} | {red[stat]:.1%} |"
                if m and h and red
                else f"| {label} {stat} | - | - | - |"
            )
    status = figures["cache_status"]
    lines += [
        "",
        f"- x-ferry-cache of the miss pass: {status['miss_pass']}; of the hit pass: {status['hit_pass']}",
        f"- goal ({figures['goal']}): {'met' if figures['goal_met'] else 'NOT met'}",
    ]
    return "\n".join(lines) + "\n"
