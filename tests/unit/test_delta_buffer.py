from __future__ import annotations

import pytest

from services.safety.output import OutputDelta
from services.worker.generation import DeltaBuffer


def test_first_delta_goes_at_once_then_at_most_one_per_window() -> None:
    buffer = DeltaBuffer(window_s=0.025)
    assert buffer.add(OutputDelta("The", 1), now=10.001) == OutputDelta("The", 1)
    assert buffer.add(OutputDelta(" capital", 1), now=10.010) is None
    assert buffer.add(OutputDelta(" of", 1), now=10.020) is None
    assert buffer.add(OutputDelta(" France", 1), now=10.030) == OutputDelta(" capital of France", 3)
    assert buffer.add(OutputDelta(" is", 1), now=10.031) is None
    assert buffer.take() == OutputDelta(" is", 1)
    assert buffer.take() is None


def test_requests_stepped_together_send_their_deltas_at_the_same_step() -> None:
    # One record each per window, whenever each request started: an engine step that crosses a window's end makes
    # every running request's delta due at once, so they leave the worker in one produce request.
    window = 0.025
    steps = [100.001 + i * 0.004 for i in range(60)]  # an engine step every 4 ms
    starts = [0, 1, 3, 5]  # the step at which each of four requests began
    buffers = [DeltaBuffer(window_s=window) for _ in starts]
    sent_at: list[set[int]] = [set() for _ in starts]
    for step, now in enumerate(steps):
        for request, buffer in enumerate(buffers):
            if step >= starts[request] and buffer.add(OutputDelta("x", 1), now=now) is not None:
                sent_at[request].add(step)
    after_first = [{s for s in sent if s > starts[r]} for r, sent in enumerate(sent_at)]
    assert all(sent == after_first[0] for sent in after_first[1:])  # the same steps, not each its own
    assert len(after_first[0]) <= (steps[-1] - steps[0]) / window + 1  # one per 25 ms, not one per step
    for sent in after_first:  # never two in one window
        windows = [steps[s] // window for s in sent]
        assert len(windows) == len(set(windows))


def test_tokens_without_text_wait_for_text_and_still_count() -> None:
    buffer = DeltaBuffer(window_s=0.0)
    assert buffer.add(OutputDelta("", 1), now=1.0) is None  # half of a multi-byte character
    assert buffer.add(OutputDelta("é", 1), now=1.1) == OutputDelta("é", 2)
    assert buffer.add(OutputDelta("", 1), now=1.2) is None  # the end-of-sequence token
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


def test_a_cancels_whole_time_counts_from_its_decision_to_the_engines_stop() -> None:
    from datetime import timedelta

    from services.worker.generation import RequestControl
    from shared.contracts import utc_now

    control = RequestControl()
    assert control.stop("cancelled", decided_at=utc_now() - timedelta(milliseconds=200))  # delivered 0.2 s later
    assert control.decision_to_abort_s() is None  # the engine has not stopped yet
    assert control.stop_requested_at is not None
    control.ended_at = control.stop_requested_at + 0.05
    assert control.stop_to_abort_s() == pytest.approx(0.05)
    whole = control.decision_to_abort_s()
    assert whole is not None and 0.25 <= whole < 1.25
    assert not control.stop("deadline_exceeded", decided_at=utc_now())  # a later cancel changes nothing
    assert control.decision_to_abort_s() == whole
    internal = RequestControl()  # a stop the worker decides itself (its deadline timer, a drain) has no decision time
    internal.stop("handed_back")
    internal.ended_at = internal.stop_requested_at
    assert internal.stop_to_abort_s() == 0.0 and internal.decision_to_abort_s() is None
