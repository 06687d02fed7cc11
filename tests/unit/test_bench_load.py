from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from benchmarks.bench.load import TraceEntry, arrival_offsets, parse_trace, read_trace


def gaps(offsets: list[float]) -> np.ndarray:
    return np.diff([0.0, *offsets])


def test_burst_sends_everything_at_once() -> None:
    assert arrival_offsets(5, "burst") == [0.0] * 5
    assert arrival_offsets(0, "poisson", rate=3.0) == []


@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [("poisson", {"rate": 4.0}), ("gamma", {"rate": 4.0, "burstiness": 0.5}), ("ramp", {"rate": 1.0, "ramp_to": 9.0})],
)
def test_offsets_are_deterministic_per_seed_and_non_decreasing(shape: str, kwargs: dict) -> None:
    first = arrival_offsets(200, shape, seed=7, **kwargs)
    assert first == arrival_offsets(200, shape, seed=7, **kwargs)
    assert first != arrival_offsets(200, shape, seed=8, **kwargs)
    assert all(later >= earlier for earlier, later in pairwise(first))
    assert first[0] > 0


def test_poisson_gaps_average_one_over_rate_and_are_exponential() -> None:
    rate = 5.0
    sample = np.concatenate([gaps(arrival_offsets(500, "poisson", rate=rate, seed=seed)) for seed in range(20)])
    assert sample.mean() == pytest.approx(1 / rate, rel=0.05)
    # An exponential's standard deviation equals its mean.
    assert sample.std() / sample.mean() == pytest.approx(1.0, rel=0.1)


def test_constant_rate_schedules_end_at_n_over_rate_as_vllm_does() -> None:
    assert arrival_offsets(100, "poisson", rate=4.0, seed=3)[-1] == pytest.approx(25.0)
    assert arrival_offsets(100, "gamma", rate=4.0, burstiness=3.0, seed=3)[-1] == pytest.approx(25.0)


def test_gamma_with_burstiness_one_is_poisson() -> None:
    assert arrival_offsets(300, "gamma", rate=2.0, burstiness=1.0, seed=1) == arrival_offsets(
        300, "poisson", rate=2.0, seed=1
    )
    sample = np.concatenate([gaps(arrival_offsets(500, "gamma", rate=2.0, seed=seed)) for seed in range(20)])
    assert sample.mean() == pytest.approx(0.5, rel=0.05)
    assert sample.std() / sample.mean() == pytest.approx(1.0, rel=0.1)


def test_burstiness_sets_the_spread_of_gaps() -> None:
    # A gamma with shape k has coefficient of variation 1 / sqrt(k).
    for burstiness in (0.25, 4.0):
        sample = np.concatenate(
            [gaps(arrival_offsets(500, "gamma", rate=2.0, burstiness=burstiness, seed=s)) for s in range(20)]
        )
        assert sample.std() / sample.mean() == pytest.approx(1 / np.sqrt(burstiness), rel=0.15)
    assert np.allclose(gaps(arrival_offsets(10, "gamma", rate=2.0, burstiness=float("inf"))), 0.5)


def test_ramp_gaps_shrink_as_the_rate_rises() -> None:
    sample = np.stack([gaps(arrival_offsets(400, "ramp", rate=1.0, ramp_to=20.0, seed=s)) for s in range(20)])
    first_quarter, last_quarter = sample[:, :100].mean(), sample[:, -100:].mean()
    assert last_quarter < first_quarter / 3
    # The last gap is drawn at ramp_to: mean 1/20 s.
    assert sample[:, -100:].mean() == pytest.approx(np.mean(1 / np.linspace(1.0, 20.0, 400)[-100:]), rel=0.15)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": -1, "shape": "burst"}, "non-negative"),
        ({"n": 3, "shape": "steady"}, "unknown load shape"),
        ({"n": 3, "shape": "poisson"}, "positive rate"),
        ({"n": 3, "shape": "poisson", "rate": 0.0}, "positive rate"),
        ({"n": 3, "shape": "gamma", "rate": -2.0}, "positive rate"),
        ({"n": 3, "shape": "poisson", "rate": float("inf")}, "positive rate"),
        ({"n": 3, "shape": "gamma", "rate": 1.0, "burstiness": 0.0}, "burstiness"),
        ({"n": 3, "shape": "ramp", "rate": 1.0}, "ramp_to"),
        ({"n": 3, "shape": "ramp", "rate": 1.0, "ramp_to": 0.0}, "ramp_to"),
        ({"n": 3, "shape": "poisson", "rate": 1.0, "ramp_to": 5.0}, "only applies"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        arrival_offsets(**kwargs)


def test_read_trace_sorts_by_offset(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text(
        '{"offset_s": 1.5, "prompt_tokens": 100, "output_tokens": 20}\n'
        "\n"
        '{"offset_s": 0, "prompt_tokens": 8, "output_tokens": 1, "note": "ignored"}\n'
    )
    assert read_trace(trace) == [TraceEntry(0.0, 8, 1), TraceEntry(1.5, 100, 20)]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "line:2: not valid JSON"),
        ("[1, 2]", "line:2: expected a JSON object"),
        ('{"prompt_tokens": 5, "output_tokens": 5}', "line:2: offset_s"),
        ('{"offset_s": -1, "prompt_tokens": 5, "output_tokens": 5}', "line:2: offset_s must be non-negative"),
        ('{"offset_s": 1, "prompt_tokens": 2.5, "output_tokens": 5}', "line:2: prompt_tokens"),
        ('{"offset_s": 1, "prompt_tokens": 5, "output_tokens": 0}', "line:2: output_tokens"),
    ],
)
def test_trace_errors_name_the_line(line: str, message: str) -> None:
    good = '{"offset_s": 0, "prompt_tokens": 5, "output_tokens": 5}'
    with pytest.raises(ValueError, match=message):
        parse_trace([good, line], source="line")


def test_empty_trace_is_an_error(tmp_path: Path) -> None:
    trace = tmp_path / "empty.jsonl"
    trace.write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl: the trace has no entries"):
        read_trace(trace)
