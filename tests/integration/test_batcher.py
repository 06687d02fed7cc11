"""The batcher against real Kafka (no workers; the tests play the worker group's side of the contracts)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from datetime import timedelta

from services.batcher.config import input_topic
from shared.contracts import (
    CompletionRequested,
    GenerationFailed,
    MessageDeadLettered,
    QueueDepthReported,
    RequestCancelled,
    utc_now,
)
from tests.integration.conftest import MODEL, Kafka

# the group notices a dead batcher after the broker's shortest session timeout
QUICK_GROUP = {"FERRY_BATCHER_SESSION_TIMEOUT_MS": "6000", "FERRY_BATCHER_HEARTBEAT_INTERVAL_MS": "1000"}


def assigned_partitions(log: str) -> int:
    lines = [line for line in log.splitlines() if "partitions assigned:" in line]
    return lines[-1].count("('") if lines else 0


def ids(batch: object) -> list[str]:
    return [r.request_id for r in batch.requests]  # type: ignore[attr-defined]


async def test_workers_with_room_get_each_request_at_once(kafka: Kafka) -> None:
    batcher = kafka.start_batcher()
    async with kafka.workers(running=0):
        for i in range(3):
            await kafka.request(f"r{i}")
            await asyncio.sleep(0.1)
        batches = await kafka.batches(until=3)
    assert sorted(r for b in batches for r in ids(b)) == ["r0", "r1", "r2"]
    assert batcher.metric("ferry_batcher_batches_total", reason="capacity") == len(batches)
    assert batcher.metric("ferry_batcher_batches_total", reason="max_wait") == 0


async def test_saturated_workers_make_requests_wait_for_a_batch_within_profile_limits(kafka: Kafka) -> None:
    batcher = kafka.start_batcher()
    async with kafka.workers(running=8):
        # spaced 50 ms apart, inside the cost profile's 500 ms window: one batch, closed by the wait limit
        for i in range(4):
            await kafka.request(f"c{i}", profile="cost")
            await asyncio.sleep(0.05)
        [cost] = await kafka.batches(until=4)
        assert ids(cost) == ["c0", "c1", "c2", "c3"]
        # a burst bigger than the latency profile's batch is cut at 8 per batch
        await asyncio.gather(*(kafka.request(f"l{i:02}") for i in range(20)))
        batches = await kafka.batches(until=24)
    latency = [b for b in batches if ids(b)[0].startswith("l")]
    assert sorted(r for b in latency for r in ids(b)) == [f"l{i:02}" for i in range(20)]
    assert all(len(b.requests) <= 8 for b in latency)
    assert batcher.metric("ferry_batcher_batches_total", reason="full") >= 2
    # every latency request left within its 50 ms limit (the histogram's 0.1 s bucket holds them all)
    held = batcher.metric("ferry_batcher_wait_seconds_count", profile="latency")
    assert held == 20
    assert batcher.metric("ferry_batcher_wait_seconds_bucket", profile="latency", le="0.1") == held


async def test_higher_priority_classes_go_first(kafka: Kafka) -> None:
    kafka.start_batcher()
    async with kafka.workers(running=8):
        for priority in ("best_effort", "batch", "interactive"):
            for i in range(4):
                await kafka.request(f"{priority}-{i}", priority=priority, profile="cost")
        [batch] = await kafka.batches(until=12)
    classes = [r.priority for r in batch.requests]
    assert classes == ["interactive"] * 4 + ["batch"] * 4 + ["best_effort"] * 4


async def test_a_flooding_tenant_does_not_push_a_light_tenant_to_the_back(kafka: Kafka) -> None:
    kafka.start_batcher()
    async with kafka.workers(running=8):
        await asyncio.gather(*(kafka.request(f"flood-{i:02}", tenant_id="flood", profile="cost") for i in range(60)))
        for i in range(4):
            await kafka.request(f"light-{i}", tenant_id="light", profile="cost")
        batches = await kafka.batches(until=64)
    order = [r for b in batches for r in ids(b)]
    assert len(order) == 64
    # first-come-first-served would put the light tenant at positions 60-63; fair share interleaves it
    light_positions = [order.index(f"light-{i}") for i in range(4)]
    assert max(light_positions) < 10, order


async def test_expired_deadlines_get_an_explicit_error_and_are_not_dispatched(kafka: Kafka) -> None:
    batcher = kafka.start_batcher()
    async with kafka.workers(running=8):
        now = utc_now()
        await kafka.request("already-late", deadline_at=now - timedelta(seconds=1), profile="cost")
        await kafka.request("late-while-held", deadline_at=now + timedelta(milliseconds=150), profile="cost")
        await kafka.request("in-time", deadline_at=now + timedelta(seconds=60), profile="cost")
        batches = await kafka.batches(until=1)
        replies = await kafka.replies(until=2)
    assert [r for b in batches for r in ids(b)] == ["in-time"]
    failures = {r.request_id: r for r in replies if isinstance(r, GenerationFailed)}
    assert set(failures) == {"already-late", "late-while-held"}
    assert all(f.code == "deadline_exceeded" for f in failures.values())
    assert batcher.metric("ferry_batcher_expired_total") == 2


async def test_a_cancelled_request_is_dropped_with_an_error(kafka: Kafka) -> None:
    kafka.start_batcher()
    async with kafka.workers(running=8):
        await kafka.request("doomed", profile="cost")
        await kafka.request("kept", profile="cost")
        await kafka.send(
            RequestCancelled(request_id="doomed", model=MODEL, reason="client_disconnected"),
            kafka.topics.cancellations,
            "doomed",
        )
        batches = await kafka.batches(until=1)
        [reply] = await kafka.replies(until=1)
    assert [r for b in batches for r in ids(b)] == ["kept"]
    assert isinstance(reply, GenerationFailed) and (reply.request_id, reply.code) == ("doomed", "cancelled")


async def test_a_poison_record_goes_to_the_dead_letter_topic_and_the_rest_goes_on(kafka: Kafka) -> None:
    kafka.start_batcher()
    await kafka.producer.send_and_wait(input_topic(kafka.topics, MODEL), b"{not json", key=b"bad")
    await kafka.request("good")
    batches = await kafka.batches(until=1)
    assert [r for b in batches for r in ids(b)] == ["good"]
    async with kafka.reader(kafka.topics.dead_letter) as consumer:
        record = await asyncio.wait_for(consumer.getone(), 20)
    parked = MessageDeadLettered.model_validate_json(record.value)
    assert (
        parked.payload == "{not json" and parked.service == "batcher" and "invalid CompletionRequested" in parked.reason
    )


async def test_queue_depth_is_published_per_model(kafka: Kafka) -> None:
    kafka.start_batcher(FERRY_BATCHER_COST__MAX_WAIT_MS="5000")
    async with kafka.workers(running=8), kafka.reader(kafka.topics.queue_status) as consumer:
        await kafka.request("i0", profile="cost")
        await kafka.request("b0", profile="cost", priority="batch")
        report = None
        for _ in range(50):
            record = await asyncio.wait_for(consumer.getone(), 10)
            report = QueueDepthReported.model_validate_json(record.value)
            if report.waiting == 2:
                break
    assert report is not None and report.model == MODEL and report.waiting == 2
    assert report.waiting_by_priority == {"interactive": 1, "batch": 1, "best_effort": 0}
    assert report.waiting_tokens == 2 * (10 + 4 + 10)
    assert report.expected_wait_seconds > 0


async def test_a_batcher_killed_mid_stream_loses_no_request(kafka: Kafka) -> None:
    first = kafka.start_batcher("first", **QUICK_GROUP)
    sent: list[CompletionRequested] = []
    async with kafka.workers(running=8):
        for i in range(30):
            sent.append(await kafka.request(f"k{i:02}", profile="cost", tenant_id=f"t{i % 3}"))
            await asyncio.sleep(0.02)
        # the first batcher has handed some batches on, and holds the latest requests (500 ms window) when it dies
        assert await kafka.batches(until=1)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait()
        for i in range(30, 40):
            sent.append(await kafka.request(f"k{i:02}", profile="cost"))
        kafka.start_batcher("second", **QUICK_GROUP)
        batches = await kafka.batches(ids={r.request_id for r in sent}, seconds=30)
    dispatched = {r for b in batches for r in ids(b)}
    assert dispatched == {r.request_id for r in sent}


async def test_two_batchers_split_the_partitions_and_lose_nothing(kafka: Kafka) -> None:
    one, two = kafka.start_batcher("one"), kafka.start_batcher("two")
    for _ in range(150):  # until the group has settled: 3 partitions, each batcher holding some
        held = [assigned_partitions(b.log.read_text()) for b in (one, two)]
        if sorted(held) == [1, 2]:
            break
        await asyncio.sleep(0.2)
    assert sorted(held) == [1, 2]
    async with kafka.workers(running=8):
        keys = [uuid.uuid4().hex for _ in range(60)]
        await asyncio.gather(*(kafka.request(k) for k in keys))
        batches = await kafka.batches(until=60)
    assert sorted(r for b in batches for r in ids(b)) == sorted(keys)
    assert one.metric("ferry_batcher_batches_total") > 0 and two.metric("ferry_batcher_batches_total") > 0


async def test_a_cancellation_read_before_its_request_still_drops_it_even_across_a_restart(kafka: Kafka) -> None:
    await kafka.send(
        RequestCancelled(request_id="early", model=MODEL, reason="requested"), kafka.topics.cancellations, "early"
    )
    kafka.start_batcher()  # started after the cancellation was produced
    await kafka.request("early")
    await kafka.request("other")
    batches = await kafka.batches(until=1)
    [reply] = await kafka.replies(until=1)
    assert [r for b in batches for r in ids(b)] == ["other"]
    assert isinstance(reply, GenerationFailed) and (reply.request_id, reply.code) == ("early", "cancelled")


async def test_a_rebalance_while_requests_are_held_loses_none(kafka: Kafka) -> None:
    # holds requests long enough for the second batcher's start (a few seconds on a busy machine) to meet them
    slow = {"FERRY_BATCHER_COST__MAX_WAIT_MS": "12000"}
    first = kafka.start_batcher("first", **slow)
    sent: list[str] = []
    async with kafka.workers(running=8):
        for i in range(20):
            sent.append((await kafka.request(f"h{i:02}", profile="cost", tenant_id=f"t{i % 4}")).request_id)
        # the first batcher holds these when a second one joins and takes partitions from it
        second = kafka.start_batcher("second", **slow)
        for i in range(20, 40):
            sent.append((await kafka.request(f"h{i:02}", profile="cost")).request_id)
            await asyncio.sleep(0.02)
        batches = await kafka.batches(ids=set(sent), seconds=60)
    assert {r for b in batches for r in ids(b)} == set(sent)
    assert assigned_partitions(second.log.read_text()) >= 1
    revoked = [line for line in first.log.read_text().splitlines() if "partitions revoked" in line]
    assert revoked and " 0 held request(s)" not in revoked[0], revoked
