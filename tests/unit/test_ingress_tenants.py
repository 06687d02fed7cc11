"""Tenant rules, key parsing, token estimates, and the reply-stream guards of the ingress (pure logic)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.ingress.serving import merged, watched, without_repeats
from services.ingress.tenants import PriorityNotAllowed, Tenant, bearer_key, estimated_tokens, key_digest, new_api_key
from shared.contracts import (
    ChatMessage,
    CompletionFinished,
    CompletionRequested,
    GenerationFailed,
    ReplyEvent,
    SamplingParams,
    TokensGenerated,
    Usage,
)

USAGE = Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)


def test_priority_defaults_to_the_tenants_and_is_capped_by_its_ceiling() -> None:
    tenant = Tenant(id="t", max_priority="batch", default_priority="batch")
    assert tenant.priority_for(None) == "batch"
    assert tenant.priority_for("best_effort") == "best_effort"
    with pytest.raises(PriorityNotAllowed, match="interactive"):
        tenant.priority_for("interactive")
    assert Tenant(id="t").priority_for("interactive") == "interactive"


def test_a_service_tiers_priority_is_lowered_to_the_tenants_ceiling_not_refused() -> None:
    tenant = Tenant(id="t", max_priority="batch", default_priority="batch")
    assert tenant.priority_capped("interactive") == "batch"
    assert tenant.priority_capped("best_effort") == "best_effort"
    assert Tenant(id="t").priority_capped("interactive") == "interactive"


def test_only_tenants_with_retention_keep_text() -> None:
    assert not Tenant(id="t").retains_text
    assert Tenant(id="t", retention_days=7).retains_text


@pytest.mark.parametrize(
    ("header", "key"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None), (None, None), ("", None)],
)
def test_bearer_key(header: str | None, key: str | None) -> None:
    assert bearer_key(header) == key


def test_new_keys_are_random_and_only_their_digest_identifies_them() -> None:
    a, b = new_api_key(), new_api_key()
    assert a.secret != b.secret and a.id != b.id
    assert a.secret.startswith("ferry-") and len(a.secret) > 40
    assert a.digest == key_digest(a.secret) != key_digest(b.secret)
    assert a.secret.startswith(a.prefix) and len(a.prefix) < len(a.secret) / 3


def test_estimate_is_a_quarter_of_the_characters_plus_every_token_that_may_be_generated() -> None:
    chat = CompletionRequested(
        request_id="r",
        model="m",
        reply_topic="t",
        messages=[ChatMessage(role="user", content="x" * 10), ChatMessage(role="assistant", content="y" * 7)],
        sampling=SamplingParams(max_tokens=100),
    )
    assert estimated_tokens(chat) == 5 + 100
    text = CompletionRequested(request_id="r", model="m", reply_topic="t", prompt="z" * 8, sampling=SamplingParams())
    assert estimated_tokens(text) == 2 + 256
    assert estimated_tokens(text, choices=3) == 2 + 3 * 256  # the prompt is read once; each choice may run to the end


async def events_of(*events: Any) -> AsyncIterator[Any]:
    for e in events:
        yield e


def delta(seq: int, text: str, offset: int | None) -> TokensGenerated:
    return TokensGenerated(request_id="r", sequence=seq, text=text, token_count=1, text_offset=offset)


async def test_text_repeated_by_a_redelivery_is_dropped() -> None:
    first_attempt = [delta(0, "Hel", 0), delta(1, "lo, w", 3)]
    # another worker starts over, coalescing differently
    second_attempt = [delta(0, "He", 0), delta(1, "llo, wo", 2), delta(2, "rld", 9)]
    out = [e async for e in without_repeats(events_of(*first_attempt, *second_attempt))]
    assert "".join(e.text for e in out if isinstance(e, TokensGenerated)) == "Hello, world"
    assert [e.text for e in out if isinstance(e, TokensGenerated)] == ["Hel", "lo, w", "o", "rld"]


async def test_deltas_without_offsets_pass_through() -> None:
    out = [e async for e in without_repeats(events_of(delta(0, "a", None), delta(1, "a", None)))]
    assert [e.text for e in out if isinstance(e, TokensGenerated)] == ["a", "a"]


async def test_watched_reports_the_final_event_or_why_the_reader_stopped() -> None:
    finals, abandoned = [], []

    def on_final(index: int, event: object) -> None:
        finals.append((index, event))

    def on_abandoned(reason: str, indexes: list[int]) -> None:
        abandoned.append((reason, indexes))

    done = CompletionFinished(request_id="r", sequence=1, model="m", text="a", finish_reason="stop", usage=USAGE)
    out = [e async for e in watched(merged([events_of(delta(0, "a", 0), done)]), on_final, on_abandoned)]
    assert out[-1] == (0, done) and finals == [(0, done)] and abandoned == []

    stream = watched(merged([events_of(delta(0, "a", 0), done)]), on_final, on_abandoned)
    await anext(stream)
    await stream.aclose()  # the client went away
    assert abandoned == [("client_disconnected", [0])]

    async def timing_out() -> AsyncIterator[ReplyEvent]:
        yield delta(0, "a", 0)
        raise TimeoutError

    with pytest.raises(TimeoutError):
        [e async for e in watched(merged([timing_out()]), on_final, on_abandoned)]
    assert abandoned[-1] == ("deadline_exceeded", [0])


async def test_a_failed_choice_abandons_the_choices_still_generating_and_only_those() -> None:
    finals, abandoned = [], []
    done = CompletionFinished(request_id="r", sequence=1, model="m", text="a", finish_reason="stop", usage=USAGE)
    failed = GenerationFailed(request_id="r", sequence=1, code="engine_error", message="boom")
    events = events_of((0, delta(0, "a", 0)), (0, done), (2, delta(0, "b", 0)), (1, failed), (2, delta(1, "c", 1)))
    stream = watched(events, lambda i, e: finals.append(i), lambda r, ix: abandoned.append((r, ix)), choices=3)
    out = [e async for e in stream]
    assert finals == [0, 1]
    assert abandoned == [("requested", [2])]  # once: not again when the stream is closed
    assert out[-1] == (2, delta(1, "c", 1))
