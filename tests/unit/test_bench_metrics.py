from __future__ import annotations

import json
import math

import pytest

from benchmarks.bench.metrics import Distribution, RequestResult, Summary, parse_slos, ratios, summarize

# Three completed requests, worked by hand below, and three failures.
#   A: sent 0.0, chunks 0.1 0.3 0.4, ended 0.5, 10 in / 5 out -> TTFT 0.1, E2EL 0.5, TPOT (0.5-0.1)/4 = 0.1, ITL 0.2 0.1
#   B: sent 1.0, chunks 1.2 1.5,     ended 1.7, 20 in / 3 out -> TTFT 0.2, E2EL 0.7, TPOT (0.7-0.2)/2 = 0.25, ITL 0.3
#   C: sent 2.0, chunk  2.4,         ended 2.4, 30 in / 1 out -> TTFT 0.4, E2EL 0.4, no TPOT (one token), no ITL
COMPLETED = [
    RequestResult(True, started_at=0.0, ended_at=0.5, chunk_times=[0.1, 0.3, 0.4], prompt_tokens=10, output_tokens=5),
    RequestResult(True, started_at=1.0, ended_at=1.7, chunk_times=[1.2, 1.5], prompt_tokens=20, output_tokens=3),
    RequestResult(True, started_at=2.0, ended_at=2.4, chunk_times=[2.4], prompt_tokens=30, output_tokens=1),
]
FAILED = [
    RequestResult(ok=False, started_at=0.0, ended_at=0.05, chunk_times=[], error="http 503"),
    RequestResult(ok=False, started_at=0.5, ended_at=0.55, chunk_times=[], error="http 503"),
    # A stream cut short: its chunk and tokens must not reach any statistic.
    RequestResult(
        ok=False, started_at=1.0, ended_at=31.0, chunk_times=[1.01], prompt_tokens=40, output_tokens=7, error="timeout"
    ),
]
DURATION_S = 4.0


def test_request_result_derives_its_latencies() -> None:
    a, b, c = COMPLETED
    assert a.ttft == pytest.approx(0.1)
    assert a.e2el == pytest.approx(0.5)
    assert a.tpot == pytest.approx(0.1)
    assert a.itls == pytest.approx([0.2, 0.1])
    assert b.tpot == pytest.approx(0.25)
    assert c.tpot is None
    assert c.itls == []
    assert FAILED[0].ttft is None


def test_summary_counts_and_throughputs() -> None:
    summary = summarize(COMPLETED + FAILED, DURATION_S)
    assert summary.completed == 3
    assert summary.failed == 3
    assert summary.failures == {"http 503": 2, "timeout": 1}
    assert summary.total_input_tokens == 10 + 20 + 30
    assert summary.total_output_tokens == 5 + 3 + 1
    assert summary.request_throughput == pytest.approx(3 / 4)  # 0.75 req/s
    assert summary.output_throughput == pytest.approx(9 / 4)  # 2.25 tok/s
    assert summary.total_token_throughput == pytest.approx(69 / 4)  # 17.25 tok/s
    assert summary.goodput is None
    assert summary.slos_ms == {}


def test_ttft_distribution_by_hand() -> None:
    ttft = summarize(COMPLETED + FAILED, DURATION_S).ttft
    # Sorted 100, 200, 400 ms. p90 sits at rank 0.9 * (3 - 1) = 1.8: 200 + 0.8 * (400 - 200) = 360.
    # p99 at rank 1.98: 200 + 0.98 * 200 = 396. Mean 700/3; deviations -400/3, -100/3, 500/3.
    assert ttft == Distribution(
        mean=pytest.approx(700 / 3),
        median=pytest.approx(200.0),
        p90=pytest.approx(360.0),
        p99=pytest.approx(396.0),
        std=pytest.approx(math.sqrt((160_000 + 10_000 + 250_000) / 9 / 3)),
    )


def test_tpot_skips_single_token_requests() -> None:
    tpot = summarize(COMPLETED + FAILED, DURATION_S).tpot
    # 100 and 250 ms: p90 at rank 0.9 -> 100 + 0.9 * 150 = 235; p99 -> 100 + 0.99 * 150 = 248.5.
    assert tpot == Distribution(
        mean=pytest.approx(175.0),
        median=pytest.approx(175.0),
        p90=pytest.approx(235.0),
        p99=pytest.approx(248.5),
        std=pytest.approx(75.0),
    )


def test_itl_is_pooled_across_requests() -> None:
    itl = summarize(COMPLETED + FAILED, DURATION_S).itl
    # A gives 200 and 100 ms, B gives 300 ms: sorted 100, 200, 300. p90 = 200 + 0.8 * 100; p99 = 200 + 0.98 * 100.
    assert itl == Distribution(
        mean=pytest.approx(200.0),
        median=pytest.approx(200.0),
        p90=pytest.approx(280.0),
        p99=pytest.approx(298.0),
        std=pytest.approx(math.sqrt(20_000 / 3)),
    )


def test_e2el_distribution_by_hand() -> None:
    e2el = summarize(COMPLETED + FAILED, DURATION_S).e2el
    # Sorted 400, 500, 700 ms. p90 = 500 + 0.8 * 200 = 660; p99 = 500 + 0.98 * 200 = 696.
    assert e2el is not None
    assert e2el.mean == pytest.approx(1600 / 3)
    assert e2el.median == pytest.approx(500.0)
    assert e2el.p90 == pytest.approx(660.0)
    assert e2el.p99 == pytest.approx(696.0)


def test_goodput_counts_requests_meeting_every_slo() -> None:
    # TTFT 100, 200, 400 ms against 300: C misses -> 2 good / 4 s.
    assert summarize(COMPLETED + FAILED, DURATION_S, {"ttft": 300}).goodput == pytest.approx(0.5)
    # TPOT 100, 250 ms against 200: B misses; C has one token, which vLLM counts as TPOT 0 -> 2 good / 4 s.
    assert summarize(COMPLETED, DURATION_S, {"tpot": 200}).goodput == pytest.approx(0.5)
    # Both at once: only A meets both -> 1 / 4 s.
    both = summarize(COMPLETED + FAILED, DURATION_S, {"ttft": 300, "tpot": 200})
    assert both.goodput == pytest.approx(0.25)
    assert both.slos_ms == {"ttft": 300, "tpot": 200}
    # The bound is inclusive: E2EL of exactly 500 ms meets 500.
    assert summarize(COMPLETED, DURATION_S, {"e2el": 500}).goodput == pytest.approx(2 / 4)


def test_completed_without_content_counts_as_failure() -> None:
    silent = RequestResult(ok=True, started_at=0.0, ended_at=0.2, chunk_times=[], output_tokens=0)
    summary = summarize([COMPLETED[0], silent], DURATION_S)
    assert summary.completed == 1
    assert summary.failures == {"no content chunks": 1}


def test_all_failed_leaves_latencies_empty() -> None:
    summary = summarize(FAILED, DURATION_S, {"ttft": 100})
    assert summary.completed == 0
    assert summary.ttft is None and summary.tpot is None and summary.itl is None and summary.e2el is None
    assert summary.request_throughput == 0.0
    assert summary.goodput == 0.0


def test_distribution_of_nothing_is_none_and_of_one_has_no_spread() -> None:
    assert Distribution.of([]) is None
    assert Distribution.of([0.25]) == Distribution(mean=250.0, median=250.0, p90=250.0, p99=250.0, std=0.0)


def test_to_dict_is_json_ready() -> None:
    summary = summarize(COMPLETED + FAILED, DURATION_S, {"ttft": 300})
    as_dict = json.loads(json.dumps(summary.to_dict()))
    assert as_dict["ttft"]["p90"] == pytest.approx(360.0)
    assert as_dict["failures"] == {"http 503": 2, "timeout": 1}
    assert as_dict["goodput"] == pytest.approx(0.5)


def test_parse_slos() -> None:
    assert parse_slos(["ttft:500", "tpot:50", "e2el:2500.5"]) == {"ttft": 500.0, "tpot": 50.0, "e2el": 2500.5}
    assert parse_slos([]) == {}


@pytest.mark.parametrize(
    ("spec", "message"),
    [("itl:50", "unknown key"), ("ttft:fast", "not a number"), ("ttft500", "key:milliseconds"), ("ttft:-1", "non-neg")],
)
def test_parse_slos_rejects_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_slos([spec])


def test_ratios_divide_ours_by_baseline_and_skip_missing() -> None:
    baseline = summarize(COMPLETED, DURATION_S)
    ours = summarize(COMPLETED, DURATION_S / 2)  # same latencies, twice the throughput
    ours_without_itl = Summary(**{**ours.__dict__, "itl": None})
    result = ratios(ours_without_itl, baseline)
    assert result["output_throughput"] == pytest.approx(2.0)
    assert result["request_throughput"] == pytest.approx(2.0)
    assert result["total_token_throughput"] == pytest.approx(2.0)
    assert result["ttft.p99"] == pytest.approx(1.0)
    assert result["e2el.mean"] == pytest.approx(1.0)
    assert "tpot.median" in result
    assert not any(key.startswith("itl.") for key in result)
    assert "goodput" not in result  # no SLO on either side
    assert result["ttft.p90"] == pytest.approx(1.0)
