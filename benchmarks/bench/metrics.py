"""Per-request results and their summary, with every metric defined as `vllm bench serve` defines it."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise

import numpy as np

SLO_KEYS = ("ttft", "tpot", "e2el")
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
THROUGHPUT_METRICS = ("request_throughput", "output_throughput", "total_token_throughput", "goodput")
RATIO_STATISTICS = ("mean", "median", "p90", "p99")
NO_CONTENT_ERROR = "no content chunks"


@dataclass
class RequestResult:
    """What one streamed request measured; times are monotonic seconds."""

    ok: bool
    started_at: float
    ended_at: float
    chunk_times: list[float]
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None
    cache: str | None = None  # the response's x-ferry-cache header (hit, miss, ...), when it had one

    @property
    def ttft(self) -> float | None:
        """Time to the first streamed content chunk, or None when none arrived."""
        return self.chunk_times[0] - self.started_at if self.chunk_times else None

    @property
    def e2el(self) -> float:
        """End-to-end latency."""
        return self.ended_at - self.started_at

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first; None unless more than one token was generated."""
        ttft = self.ttft
        if ttft is None or self.output_tokens <= 1:
            return None
        return (self.e2el - ttft) / (self.output_tokens - 1)

    @property
    def itls(self) -> list[float]:
        """Gaps between consecutive streamed content chunks."""
        return [later - earlier for earlier, later in pairwise(self.chunk_times)]


@dataclass(frozen=True)
class Distribution:
    """Summary statistics of one latency metric, in milliseconds."""

    mean: float
    median: float
    p90: float
    p99: float
    std: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Distribution | None:
        """Summarise samples given in seconds; None for no samples. Percentiles interpolate linearly, as numpy does."""
        if len(seconds) == 0:
            return None
        ms = np.asarray(seconds, dtype=float) * 1000.0
        return cls(
            mean=float(np.mean(ms)),
            median=float(np.median(ms)),
            p90=float(np.percentile(ms, 90)),
            p99=float(np.percentile(ms, 99)),
            std=float(np.std(ms)),
        )


@dataclass(frozen=True)
class Summary:
    """The metrics of one benchmark run; throughputs per second of `duration_s`, latencies in milliseconds."""

    completed: int
    failed: int
    failures: dict[str, int]
    duration_s: float
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    total_input_tokens: int
    total_output_tokens: int
    ttft: Distribution | None
    tpot: Distribution | None
    itl: Distribution | None
    e2el: Distribution | None
    goodput: float | None
    slos_ms: dict[str, float]

    def to_dict(self) -> dict:
        """A JSON-ready copy, distributions as nested dicts."""
        return asdict(self)


def parse_slos(specs: list[str]) -> dict[str, float]:
    """Parse SLOs written as "key:milliseconds" (keys ttft, tpot, e2el), e.g. ["ttft:500", "tpot:50"]."""
    slos: dict[str, float] = {}
    for spec in specs:
        key, sep, value = spec.partition(":")
        key = key.strip()
        if not sep:
            raise ValueError(f"SLO {spec!r} is not of the form key:milliseconds, e.g. ttft:500")
        if key not in SLO_KEYS:
            raise ValueError(f"SLO {spec!r} has unknown key {key!r}; expected one of {', '.join(SLO_KEYS)}")
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"SLO {spec!r} has {value!r}, which is not a number of milliseconds") from None
        if not math.isfinite(ms) or ms < 0:
            raise ValueError(f"SLO {spec!r} must be a finite, non-negative number of milliseconds")
        slos[key] = ms
    return slos


def summarize(results: list[RequestResult], duration_s: float, slos_ms: dict[str, float] | None = None) -> Summary:
    """Compute vLLM's serving metrics over `results`; failed requests count only as failures, by reason."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    slos_ms = dict(slos_ms or {})
    unknown = set(slos_ms) - set(SLO_KEYS)
    if unknown:
        raise ValueError(f"unknown SLO keys {sorted(unknown)}; expected some of {', '.join(SLO_KEYS)}")

    # vLLM fails a request that never streamed a content chunk: it has no TTFT.
    completed = [r for r in results if r.ok and r.chunk_times]
    failures = Counter(_failure_reason(r) for r in results if not (r.ok and r.chunk_times))

    total_input = sum(r.prompt_tokens for r in completed)
    total_output = sum(r.output_tokens for r in completed)
    ttfts = [r.ttft for r in completed if r.ttft is not None]
    tpots = [r.tpot for r in completed if r.tpot is not None]
    itls = [gap for r in completed for gap in r.itls]
    e2els = [r.e2el for r in completed]
    goodput = sum(_meets_slos(r, slos_ms) for r in completed) / duration_s if slos_ms else None

    return Summary(
        completed=len(completed),
        failed=sum(failures.values()),
        failures=dict(failures),
        duration_s=duration_s,
        request_throughput=len(completed) / duration_s,
        output_throughput=total_output / duration_s,
        total_token_throughput=(total_input + total_output) / duration_s,
        total_input_tokens=total_input,
        total_output_tokens=total_output,
        ttft=Distribution.of(ttfts),
        tpot=Distribution.of(tpots),
        itl=Distribution.of(itls),
        e2el=Distribution.of(e2els),
        goodput=goodput,
        slos_ms=slos_ms,
    )


def ratios(ours: Summary, baseline: Summary) -> dict[str, float]:
    """ours / baseline for throughputs and latency mean, median, p90, p99; a metric missing or zero in either is
    skipped."""
    pairs: dict[str, tuple[float | None, float | None]] = {
        name: (getattr(ours, name), getattr(baseline, name)) for name in THROUGHPUT_METRICS
    }
    for metric in LATENCY_METRICS:
        ours_dist, base_dist = getattr(ours, metric), getattr(baseline, metric)
        for stat in RATIO_STATISTICS:
            pairs[f"{metric}.{stat}"] = (
                getattr(ours_dist, stat) if ours_dist else None,
                getattr(base_dist, stat) if base_dist else None,
            )
    return {key: a / b for key, (a, b) in pairs.items() if a is not None and b}


def _failure_reason(result: RequestResult) -> str:
    if result.ok:
        return NO_CONTENT_ERROR
    return result.error or "unknown"


def _meets_slos(result: RequestResult, slos_ms: dict[str, float]) -> bool:
    # As in vLLM: TPOT counts as 0 for a single-token answer, the bound is inclusive, compared in seconds.
    observed_s = {"ttft": result.ttft, "tpot": result.tpot or 0.0, "e2el": result.e2el}
    return all(limit_ms / 1000.0 >= observed_s[key] for key, limit_ms in slos_ms.items())
