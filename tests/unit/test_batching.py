from __future__ import annotations

from datetime import timedelta

from services.batcher.batching import expired, group_into_batches, unique_by_request_id
from shared.contracts import ChatMessage, CompletionRequested, utc_now


def request(request_id: str, model: str = "m", **extra: object) -> CompletionRequested:
    return CompletionRequested(
        request_id=request_id, model=model, reply_topic="r", messages=[ChatMessage(role="user", content="hi")], **extra
    )


def test_batches_are_per_model_bounded_and_keep_arrival_order() -> None:
    reqs = [request(f"a{i}", "a") for i in range(5)] + [request("b0", "b")] + [request("a5", "a")]
    batches = group_into_batches(reqs, max_batch_size=4)
    assert [[r.request_id for r in b] for b in batches] == [["a0", "a1", "a2", "a3"], ["a4", "a5"], ["b0"]]


def test_redelivered_duplicates_within_a_poll_are_dropped() -> None:
    reqs = [request("x"), request("y"), request("x")]
    assert [r.request_id for r in unique_by_request_id(reqs)] == ["x", "y"]


def test_expiry_only_applies_past_the_deadline() -> None:
    now = utc_now()
    assert not expired(request("x"), now)
    assert not expired(request("x", deadline_at=now + timedelta(seconds=1)), now)
    assert expired(request("x", deadline_at=now), now)
