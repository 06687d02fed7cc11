"""The ingress's reply listener routing records to the requests waiting for them (records built here, no broker)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from aiokafka import ConsumerRecord
from opentelemetry.trace import NoOpTracer

from services.ingress.adapters import ReplyListener
from shared.contracts import CompletionFinished, Message, TokensGenerated, Usage, utc_now
from shared.settings import CommonSettings

USAGE = Usage(prompt_tokens=3, completion_tokens=1, total_tokens=4)


def _listener() -> ReplyListener:
    return ReplyListener(CommonSettings(), "replies", None, NoOpTracer())  # type: ignore[arg-type]  # no dead letters


def _record(event: Message) -> ConsumerRecord:
    value = event.model_dump_json().encode()
    return ConsumerRecord("replies", 0, 0, 0, 0, None, value, None, 0, len(value), [])


async def test_replies_reach_their_reader_in_order_up_to_the_final_event() -> None:
    listener = _listener()
    replies = listener.expect("r", utc_now() + timedelta(seconds=5))
    for event in (
        TokensGenerated(request_id="r", sequence=0, text="Par", token_count=1),
        TokensGenerated(request_id="other", sequence=0, text="x", token_count=1),  # nobody waits for it
        TokensGenerated(request_id="r", sequence=1, text="is", token_count=1),
        CompletionFinished(request_id="r", sequence=2, model="m", text="Paris", finish_reason="stop", usage=USAGE),
    ):
        await listener._route(_record(event))
    received = [event async for event in replies]
    assert [(e.request_id, e.sequence) for e in received] == [("r", 0), ("r", 1), ("r", 2)]
    assert listener.waiting == 0


async def test_a_reader_waits_no_longer_than_its_deadline() -> None:
    listener = _listener()
    replies = listener.expect("r", utc_now() + timedelta(seconds=0.2))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(replies), 5)
    assert listener.waiting == 0


async def test_a_reader_closed_late_leaves_a_newer_request_of_the_same_id_waiting() -> None:
    listener = _listener()
    deadline = utc_now() + timedelta(seconds=5)
    stale = listener.expect("r", deadline)
    await listener._route(_record(TokensGenerated(request_id="r", sequence=0, text="a", token_count=1)))
    await anext(stale)
    fresh = listener.expect("r", deadline)  # registered again, as a retried id would be
    await stale.aclose()  # an abandoned reader's generator is closed when it is collected, whenever that is
    assert listener.waiting == 1
    final = CompletionFinished(request_id="r", sequence=0, model="m", text="b", finish_reason="stop", usage=USAGE)
    await listener._route(_record(final))
    assert await asyncio.wait_for(anext(fresh), 5) == final
