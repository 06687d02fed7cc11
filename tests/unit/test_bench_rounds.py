"""``bench --rounds``: a comparison run several times, the order swapped each round, each round's ratio reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench import report
from benchmarks.bench.__main__ import main
from benchmarks.bench.metrics import RequestResult, summarize


def run(name: str, tokens_per_request: int, duration_s: float) -> report.TargetRun:
    """Four requests of ``tokens_per_request`` tokens over ``duration_s``."""
    results = [RequestResult(True, 0.0, 1.0, [0.1, 0.5], 10, tokens_per_request) for _ in range(4)]
    return report.TargetRun(name, "here", summarize(results, duration_s), results, 0.0)


def test_each_round_has_its_own_ratio_and_the_pooled_run_counts_every_request_over_every_duration() -> None:
    rounds = [
        report.Round(["worker", "engine"], {"worker": run("worker", 100, 4.0), "engine": run("engine", 100, 5.0)}),
        report.Round(["engine", "worker"], {"engine": run("engine", 100, 2.0), "worker": run("worker", 100, 4.0)}),
        report.Round(["worker", "engine"], {"worker": run("worker", 100, 4.0), "engine": run("engine", 100, 4.0)}),
    ]
    figures = report.round_ratios(rounds, "worker", "engine")
    assert [r["ratio"] for r in figures["rounds"]] == [1.25, 0.5, 1.0]
    assert figures["median_ratio"] == 1.0
    assert [r["order"] for r in figures["rounds"]][:2] == [["worker", "engine"], ["engine", "worker"]]
    pooled = report.pooled("engine", rounds)
    assert (pooled.summary.completed, pooled.summary.duration_s) == (12, 11.0)
    assert pooled.summary.output_throughput == pytest.approx(1200 / 11.0)
    text = report.rounds_markdown(figures, "worker", "engine")
    assert "| 2 | engine, worker | 100.0 | 200.0 | 0.50 |" in text
    assert "Median ratio: 1.00 (lowest 0.50, highest 1.25)." in text


def test_rounds_need_a_second_target(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--rounds repeats a comparison"):
        main(["--rounds", "3", "--out", str(tmp_path)])
