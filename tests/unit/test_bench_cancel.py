"""benchmarks/cancel.py reads the worker's Prometheus histograms (a /metrics page as prometheus_client writes it):
what a run added, and the bucket of a quantile."""

from __future__ import annotations

from benchmarks.cancel import parse_histogram

BEFORE = """\
# TYPE ferry_worker_cancel_to_abort_seconds histogram
ferry_worker_cancel_to_abort_seconds_bucket{le="0.005",model="m"} 1.0
ferry_worker_cancel_to_abort_seconds_bucket{le="0.01",model="m"} 1.0
ferry_worker_cancel_to_abort_seconds_bucket{le="+Inf",model="m"} 1.0
ferry_worker_cancel_to_abort_seconds_sum{model="m"} 0.004
ferry_worker_cancel_to_abort_seconds_count{model="m"} 1.0
ferry_worker_cancel_to_abort_seconds_count{model="other"} 7.0
"""
AFTER = """\
# TYPE ferry_worker_cancel_to_abort_seconds histogram
ferry_worker_cancel_to_abort_seconds_bucket{le="0.005",model="m"} 2.0
ferry_worker_cancel_to_abort_seconds_bucket{le="0.01",model="m"} 4.0
ferry_worker_cancel_to_abort_seconds_bucket{le="+Inf",model="m"} 5.0
ferry_worker_cancel_to_abort_seconds_sum{model="m"} 0.104
ferry_worker_cancel_to_abort_seconds_count{model="m"} 5.0
"""


def test_a_run_counts_only_what_it_added_for_its_model() -> None:
    name = "ferry_worker_cancel_to_abort_seconds"
    added = parse_histogram(AFTER, name, "m").minus(parse_histogram(BEFORE, name, "m"))
    assert added.count == 4 and round(added.total, 6) == 0.1
    assert added.buckets == {0.005: 1, 0.01: 3, float("inf"): 4}
    assert added.bucket_of(0.5) == 0.01  # 2 of 4 fall at or below 10 ms, 1 at or below 5 ms
    assert added.bucket_of(0.9) == float("inf")
