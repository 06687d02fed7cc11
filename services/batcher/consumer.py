"""Kafka adapter of the batcher: one manually committed consumer (in the batchers' consumer group) for the request
topics, and two group-less consumers that every batcher runs for cancellations and worker reports.

FastStream's batch subscriber commits a whole poll at once; holding requests across polls needs per-partition
commits up to the lowest record still held, so this is a plain aiokafka consumer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from services.batcher.handlers import Batcher

logger = logging.getLogger(__name__)

STATUS_LOOKBACK_S = 30.0


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, batcher: Batcher) -> None:
        self._batcher = batcher

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._batcher.on_revoked((tp.topic, tp.partition) for tp in revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        logger.info("partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in assigned))


@dataclass
class Consumers:
    """The batcher's consumers and the tasks that drive them; started after the broker, stopped before it."""

    batcher: Batcher
    bootstrap: str
    request_topics: list[str]
    cancellations_topic: str
    worker_status_topic: str
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    requests: AIOKafkaConsumer | None = None
    side: list[AIOKafkaConsumer] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return bool(self.tasks) and not any(t.done() for t in self.tasks)

    async def start(self) -> None:
        settings = self.batcher.deps.settings
        self.requests = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=f"ferry-batcher-{self.batcher.deps.instance_id}",
            group_id=settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            # aiokafka has no cooperative (incremental) rebalancing; sticky keeps assignments stable across them
            partition_assignment_strategy=(StickyPartitionAssignor,),
        )
        self.batcher.commit = self._commit
        await self.requests.start()
        self.requests.subscribe(self.request_topics, listener=_Rebalance(self.batcher))
        # a restarted batcher reads held requests again: it needs the cancellations it saw before, and fresh reports
        cancellations = await self._side_consumer(self.cancellations_topic, lookback_s=settings.cancel_memory_s)
        statuses = await self._side_consumer(self.worker_status_topic, lookback_s=STATUS_LOOKBACK_S)
        self.tasks = [
            asyncio.create_task(self._run_requests(), name="batcher-requests"),
            asyncio.create_task(self._run_side(cancellations, self.batcher.on_cancellation), name="batcher-cancel"),
            asyncio.create_task(self._run_side(statuses, self.batcher.on_worker_status), name="batcher-status"),
            asyncio.create_task(self._run_reports(), name="batcher-queue-reports"),
        ]
        for task in self.tasks:
            task.add_done_callback(_log_end)

    async def stop(self) -> None:
        """Stops reading, hands on what is held, commits, leaves the group."""
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.requests is not None:
            with contextlib.suppress(Exception):
                await self.batcher.drain()
            await self.requests.stop()
        for consumer in self.side:
            await consumer.stop()

    async def _side_consumer(self, topic: str, lookback_s: float) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="latest"
        )
        await consumer.start()
        consumer.subscribe([topic])
        self.side.append(consumer)
        while not consumer.assignment():
            await asyncio.sleep(0.05)
        since_ms = int((time.time() - lookback_s) * 1000)
        found = await consumer.offsets_for_times({tp: since_ms for tp in consumer.assignment()})
        for tp, at in found.items():
            if at is not None:
                consumer.seek(tp, at.offset)
        # resolve the rest ("latest") now, so a record produced once the batcher reports healthy is never skipped
        for tp in consumer.assignment():
            await consumer.position(tp)
        return consumer

    async def _commit(self, points: dict[Hashable, int]) -> bool:
        assert self.requests is not None
        offsets = {TopicPartition(t, p): offset for (t, p), offset in points.items()}  # type: ignore[misc]
        try:
            await self.requests.commit(offsets)
            return True
        except (CommitFailedError, IllegalStateError) as exc:
            # a rebalance is under way: the revocation hook commits or leaves the records to the next owner
            logger.warning("commit of %s refused (%s)", points, exc)
            return False

    async def _run_requests(self) -> None:
        assert self.requests is not None
        settings = self.batcher.deps.settings
        clock = self.batcher.deps.clock
        due: float | None = None
        while True:
            wait_ms = settings.poll_ms if due is None else min(settings.poll_ms, max(0, (due - clock()) * 1000))
            generation = self.batcher.generation
            polled = await self.requests.getmany(timeout_ms=math.ceil(wait_ms), max_records=settings.max_poll_records)
            records = [r for rs in polled.values() for r in rs]
            try:
                due = await (self.batcher.on_requests(records, generation) if records else self.batcher.tick())
                if records and self.batcher.generation != generation:
                    # A rebalance during the poll: its records were dropped (or held, then dropped on revocation),
                    # but a poll that waited through the rebalance returns records of the new assignment, already
                    # read from the committed offsets, so the position has moved past them: read them again.
                    again = {TopicPartition(r.topic, r.partition) for r in records}
                    logger.info("a rebalance during the poll; reading %s again from the committed offsets", again)
                    await self._rewind(again)
            except KafkaError:
                # what could not be handed on is held again (or, for records not yet held, read again after the
                # next rebalance or restart: their offsets were not committed)
                logger.exception("dispatch cycle failed; reading again from the committed offsets in a second")
                await asyncio.sleep(1)
                await self._rewind()
                due = None

    async def _rewind(self, partitions: set[TopicPartition] | None = None) -> None:
        """Records of a failed or dropped poll may not all be held: read these partitions (default: all assigned) again
        from their committed offsets (held requests read again are recognised as such)."""
        assert self.requests is not None
        for tp in self.requests.assignment():
            if partitions is not None and tp not in partitions:
                continue
            committed = await self.requests.committed(tp)
            try:
                if committed is None:
                    await self.requests.seek_to_beginning(tp)
                else:
                    self.requests.seek(tp, committed)
            except IllegalStateError:
                pass  # revoked meanwhile: its next owner starts from the committed offset anyway

    async def _run_side(self, consumer: AIOKafkaConsumer, handle: Callable[[ConsumerRecord], Awaitable[None]]) -> None:
        async for record in consumer:
            try:
                await handle(record)
            except KafkaError:
                logger.exception("handling %s[%d]@%d failed", record.topic, record.partition, record.offset)

    async def _run_reports(self) -> None:
        interval = self.batcher.deps.settings.queue_report_interval_s
        while True:
            try:
                await self.batcher.report_queues()
            except KafkaError:
                logger.exception("queue report failed")
            await asyncio.sleep(interval)


def _log_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s stopped: %r; /health now fails", task.get_name(), task.exception())
