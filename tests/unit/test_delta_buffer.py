from __future__ import annotations

from services.worker.generation import DeltaBuffer


def test_first_delta_goes_at_once_then_at_most_one_per_window() -> None:
    buffer = DeltaBuffer(window_s=0.025)
    assert buffer.add("The", 1, now=10.000) == ("The", 1)
    assert buffer.add(" capital", 1, now=10.010) is None
    assert buffer.add(" of", 1, now=10.020) is None
    assert buffer.add(" France", 1, now=10.030) == (" capital of France", 3)
    assert buffer.add(" is", 1, now=10.031) is None
    assert buffer.take() == (" is", 1)
    assert buffer.take() is None


def test_tokens_without_text_wait_for_text_and_still_count() -> None:
    buffer = DeltaBuffer(window_s=0.0)
    assert buffer.add("", 1, now=1.0) is None  # half of a multi-byte character
    assert buffer.add("é", 1, now=1.1) == ("é", 2)
    assert buffer.add("", 1, now=1.2) is None  # the end-of-sequence token
    assert buffer.take() == ("", 1)
