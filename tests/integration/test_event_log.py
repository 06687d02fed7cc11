"""The event log of streamed background responses (adapters.EventLog) against the real Redis: what a client that
takes a stream up again (GET /v1/responses/{id}?stream=true&starting_after=N) reads."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from redis.asyncio import Redis

from services.ingress.adapters import EventLog, LoggedEvent
from shared.contracts import utc_now
from shared.settings import CommonSettings

TIMEOUT_S = 0.5  # the ingress's Redis timeout by default


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(CommonSettings().redis_url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
    yield client
    await client.aclose()


def event(sequence: int, ends: bool = False) -> LoggedEvent:
    return LoggedEvent(sequence, f"event: e\ndata: {sequence}\n\n", ends)


async def test_a_reader_waits_for_events_longer_than_redis_may_take_to_answer(redis: Redis) -> None:
    log = EventLog(redis, f"test-{uuid.uuid4().hex[:8]}.", TIMEOUT_S)
    expire_at = utc_now() + timedelta(minutes=1)
    await log.append("resp_1", event(0), expire_at)

    async def later() -> None:
        await asyncio.sleep(4 * TIMEOUT_S)  # the next event is slow to come (a takeover takes seconds)
        await log.append("resp_1", event(1), expire_at)
        await asyncio.sleep(2 * TIMEOUT_S)
        await log.append("resp_1", event(2, ends=True), expire_at)

    writer = asyncio.create_task(later())
    read = [e async for e in log.read("resp_1", 0, utc_now() + timedelta(seconds=30))]
    await writer
    assert read == [event(1), event(2, ends=True)]
    # meanwhile the log kept working for writers: the waits did not read as Redis not answering
    await log.append("resp_2", event(0), expire_at)
    assert await log.last("resp_2") == event(0)


async def test_events_kept_twice_are_read_once(redis: Redis) -> None:
    """The instance that asked and one that took the response over (its beat missed for a while) both keep events;
    they are the same events, numbered alike."""
    log = EventLog(redis, f"test-{uuid.uuid4().hex[:8]}.", TIMEOUT_S)
    expire_at = utc_now() + timedelta(minutes=1)
    for sequence in [0, 1, 2, 1, 2, 3]:
        await log.append("resp_1", event(sequence, ends=sequence == 3), expire_at)
    read = [e.sequence async for e in log.read("resp_1", -1, utc_now() + timedelta(seconds=30))]
    assert read == [0, 1, 2, 3]
