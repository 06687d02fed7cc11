from __future__ import annotations

from services.safety.output import OutputDelta
from services.worker.generation import DeltaBuffer


def test_first_delta_goes_at_once_then_at_most_one_per_window() -> None:
    buffer = DeltaBuffer(window_s=0.025)
    assert buffer.add("The", 1, now=10.000) == OutputDelta("The", 1)
    assert buffer.add(" capital", 1, now=10.010) is None
    assert buffer.add(" of", 1, now=10.020) is None
    assert buffer.add(" France", 1, now=10.030) == OutputDelta(" capital of France", 3)
    assert buffer.add(" is", 1, now=10.031) is None
    assert buffer.take() == OutputDelta(" is", 1)
    assert buffer.take() is None


def test_tokens_without_text_wait_for_text_and_still_count() -> None:
    buffer = DeltaBuffer(window_s=0.0)
    assert buffer.add("", 1, now=1.0) is None  # half of a multi-byte character
    assert buffer.add("é", 1, now=1.1) == OutputDelta("é", 2)
    assert buffer.add("", 1, now=1.2) is None  # the end-of-sequence token
    assert buffer.take() == OutputDelta("", 1)


def test_a_request_without_seed_gets_the_same_seed_on_every_delivery() -> None:
    from services.worker.generation import seeded
    from shared.contracts import SamplingParams

    unseeded = SamplingParams(temperature=1.0)
    first, again = seeded(unseeded, "req-1"), seeded(unseeded, "req-1")
    assert first.seed is not None and first.seed == again.seed
    assert seeded(unseeded, "req-2").seed != first.seed
    assert seeded(SamplingParams(seed=7), "req-1").seed == 7  # the client's seed wins


def test_the_first_stop_reason_wins() -> None:
    from services.worker.generation import RequestControl

    control = RequestControl()
    assert control.stop("cancelled")
    assert not control.stop("deadline_exceeded")
    assert control.stop_reason == "cancelled" and control.stop_requested_at is not None
