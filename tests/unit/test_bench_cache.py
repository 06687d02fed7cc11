"""The cache benchmark's figures, checked against examples computed by hand."""

from __future__ import annotations

import pytest

from benchmarks.bench.cache import cache_comparison, markdown, unique_to_run
from benchmarks.bench.metrics import RequestResult
from benchmarks.bench.prompts import BenchRequest


def result(e2e_s: float, ttft_s: float, cache: str) -> RequestResult:
    return RequestResult(True, 0.0, e2e_s, [ttft_s], prompt_tokens=1, output_tokens=1, cache=cache)


def test_reduction_is_one_minus_hit_over_miss_at_p50_and_p99() -> None:
    misses = [result(0.2, 0.05, "miss")] * 3  # every miss 200 ms
    hits = [result(0.004, 0.003, "hit")] * 3  # every hit 4 ms
    figures = cache_comparison(misses, hits)
    assert figures["e2el.miss"] == {"p50": pytest.approx(200), "p99": pytest.approx(200)}
    assert figures["e2el.reduction"]["p50"] == pytest.approx(0.98)
    assert figures["ttft.reduction"]["p99"] == pytest.approx(0.94)
    assert figures["goal_met"] is True
    assert figures["cache_status"] == {"miss_pass": {"miss": 3}, "hit_pass": {"hit": 3}}
    assert "| end-to-end latency p50 | 200.0 | 4.0 | 98.0% |" in markdown(figures)


def test_goal_not_met_when_hits_are_not_fast_enough() -> None:
    figures = cache_comparison([result(0.1, 0.05, "miss")], [result(0.02, 0.01, "bypass")])
    assert figures["goal_met"] is False and "NOT met" in markdown(figures)


def test_requests_are_made_unique_to_the_run_without_changing_the_rest() -> None:
    requests = [BenchRequest([{"role": "user", "content": "hello"}], 8)]
    first, second = unique_to_run(requests), unique_to_run(requests)
    assert first[0].messages[0]["content"].endswith("hello") and first[0].max_tokens == 8
    assert first[0].messages != second[0].messages and requests[0].messages[0]["content"] == "hello"


def test_reports_never_hold_the_api_key() -> None:
    from benchmarks.bench.__main__ import _redacted

    assert _redacted(["--api-key", "ferry-secret", "--model", "m"]) == ["--api-key", "***", "--model", "m"]
    assert _redacted(["--api-key=ferry-secret"]) == ["--api-key=***"]
