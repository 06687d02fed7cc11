"""What an ingress instance that takes background responses over reads from the reply topic of the instance that
asked (adapters.RepliesReplay), against the real Kafka: for each, the replies that instance's listener would have
given, in order, held back the same way for a prompt screened beside generation, and its deadline judged by when
each reply was sent, so a response taken over late still ends as it did; one reading of the topic for them all."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer

from services.ingress.adapters import RepliesReplay
from shared.contracts import (
    CompletionFinished,
    GenerationFailed,
    Message,
    PromptCleared,
    ReplyEvent,
    TokensGenerated,
    Usage,
    utc_now,
)
from shared.kafka import delete_topics, ensure_topics
from shared.settings import CommonSettings


@pytest.fixture
async def topic() -> AsyncIterator[str]:
    common = CommonSettings(topic_prefix=f"test-takeover-{uuid.uuid4().hex[:8]}.")
    name = f"{common.topic_prefix}replies.ingress-a"
    await ensure_topics(common, [name], partitions=1)
    yield name
    await delete_topics(common)


async def produce(topic: str, *replies: tuple[Message, datetime]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=CommonSettings().kafka_bootstrap)
    await producer.start()
    try:
        for message, sent_at in replies:
            value = message.model_dump_json().encode()
            await producer.send_and_wait(topic, value, timestamp_ms=int(sent_at.timestamp() * 1000))
    finally:
        await producer.stop()


def delta(request_id: str, sequence: int, text: str, offset: int) -> TokensGenerated:
    return TokensGenerated(request_id=request_id, sequence=sequence, text=text, token_count=1, text_offset=offset)


def final(request_id: str, sequence: int, text: str) -> CompletionFinished:
    usage = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
    return CompletionFinished(
        request_id=request_id, sequence=sequence, model="m", text=text, finish_reason="stop", usage=usage
    )


def cleared(request_id: str) -> PromptCleared:
    return PromptCleared(request_id=request_id, by="screening")


async def read_all(topic: str, request_id: str, deadline_at: datetime, cleared: bool = True) -> list[ReplyEvent]:
    replay = RepliesReplay(CommonSettings(), topic)
    replies = replay.expect(request_id, 0, deadline_at, cleared)
    reading = replay.start()
    try:
        return [e async for e in replies]
    finally:
        await reading  # it ends with its one request


async def test_one_reading_serves_every_request_taken_over_from_its_offset_to_its_end(topic: str) -> None:
    now = utc_now()
    first = [delta("r1", 0, "Hel", 0), final("r1", 1, "Hel")]
    await produce(topic, *((m, now) for m in first))
    second_offset = 2  # r2 left after r1's replies: its own come after
    blocked = GenerationFailed(request_id="r2", sequence=0, code="content_blocked", message="blocked: violence")
    await produce(topic, *((m, now) for m in [delta("r2", 0, "Bad", 0), final("r2", 1, "Bad"), blocked]))
    late = now - timedelta(milliseconds=1)  # r3's deadline had passed when these were sent
    await produce(topic, (delta("r3", 0, "Hi", 0), now), (final("r3", 1, "Hi"), now))
    replay = RepliesReplay(CommonSettings(), topic)
    streams = {
        "r1": replay.expect("r1", 0, now + timedelta(minutes=1)),
        "r2": replay.expect("r2", second_offset, now + timedelta(minutes=1), cleared=False),
        "r3": replay.expect("r3", 0, late),
    }
    reading = replay.start()
    assert [e async for e in streams["r1"]] == first
    assert [e async for e in streams["r2"]] == [blocked]  # screened beside generation, and blocked
    with pytest.raises(TimeoutError):
        [e async for e in streams["r3"]]
    await asyncio.wait_for(reading, 10)  # done: nothing left to wait for


async def test_a_taken_over_request_reads_its_own_replies_in_order_up_to_its_final_one(topic: str) -> None:
    now = utc_now()
    mine = [delta("r1", 0, "Hel", 0), delta("r1", 1, "lo.", 3), final("r1", 2, "Hello.")]
    other = [delta("r2", 0, "Bye", 0), final("r2", 1, "Bye.")]
    await produce(topic, *((m, now) for m in [other[0], mine[0], mine[1], other[1], mine[2], delta("r1", 3, "x", 6)]))
    assert await read_all(topic, "r1", now + timedelta(minutes=1)) == mine  # nothing after its final event


async def test_output_of_a_prompt_screened_beside_generation_waits_for_the_verdict(topic: str) -> None:
    now = utc_now()
    blocked = GenerationFailed(request_id="r1", sequence=0, code="content_blocked", message="blocked: violence")
    answer = [delta("r1", 0, "Hel", 0), final("r1", 1, "Hel")]
    # the worker answered before the safety stage blocked the prompt: the block is the end, no text passes
    await produce(topic, *((m, now) for m in [*answer, blocked]))
    assert await read_all(topic, "r1", now + timedelta(minutes=1), cleared=False) == [blocked]
    # cleared after the worker answered: the answer, once the verdict is in
    answer = [delta("r2", 0, "Hi", 0), final("r2", 1, "Hi")]
    await produce(topic, *((m, now) for m in [*answer, cleared("r2")]))
    assert await read_all(topic, "r2", now + timedelta(minutes=1), cleared=False) == answer


async def test_its_deadline_is_judged_by_when_replies_were_sent(topic: str) -> None:
    deadline_at = utc_now() - timedelta(seconds=5)  # taken over after its deadline
    # answered in time: it still counts, as it did for the instance that asked
    await produce(topic, (delta("r1", 0, "Hi", 0), deadline_at - timedelta(seconds=2)))
    await produce(topic, (final("r1", 1, "Hi"), deadline_at - timedelta(seconds=1)))
    assert [e.event for e in await read_all(topic, "r1", deadline_at)] == ["tokens_generated", "completion_finished"]
    # answered after it: the listener had stopped waiting, and so does this
    late = utc_now() - timedelta(seconds=5)
    await produce(topic, (delta("r3", 0, "Hi", 0), late - timedelta(seconds=1)), (final("r3", 1, "Hi"), late))
    with pytest.raises(TimeoutError):
        await read_all(topic, "r3", late - timedelta(milliseconds=500))
    # nothing came at all, and its deadline has passed: the end of the topic is the end
    with pytest.raises(TimeoutError):
        await read_all(topic, "r4", utc_now())
