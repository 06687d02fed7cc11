"""Kafka adapter of the prompt screening stage: one plain aiokafka consumer (group ``safety``) over every model's
request topic, handing each poll to the stage and committing it once handled.

Not FastStream's batch subscriber: between two empty polls it sleeps for its batch timeout, and a request arriving
then waits for the sleep to end (measured: about 5 ms of the stage's added latency at p50). ``getmany`` here returns as
soon as any record is there, and only waits (without sleeping after) while there is none.

Commits run in the background, one at a time, with the explicit offsets of polls already handled: an offset commit
takes a few milliseconds (measured 6 ms p50 here), and a request arriving meanwhile should not wait for it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

logger = logging.getLogger(__name__)

Handle = Callable[[Sequence[ConsumerRecord]], Awaitable[None]]


@dataclass
class StageConsumer:
    bootstrap: str
    topics: list[str]
    group_id: str
    max_records: int
    handle: Handle
    stage: str = "request"
    """What its partitions hold, for its logs and task: request (prompts to screen) or moderation."""
    idle_poll_ms: int = 1000
    consumer: AIOKafkaConsumer | None = None
    task: asyncio.Task[None] | None = field(default=None)
    _handled: dict[TopicPartition, int] = field(default_factory=dict)
    _committing: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id="ferry-safety",
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await self.consumer.start()
        self.consumer.subscribe(self.topics, listener=AssignmentLog(self.stage))
        self.task = asyncio.create_task(self._run(), name=f"safety-{self.stage}s")

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self._committing is not None:
            await asyncio.gather(self._committing, return_exceptions=True)
        if self._handled:
            await self._commit()
        if self.consumer:
            await self.consumer.stop()

    async def _run(self) -> None:
        assert self.consumer is not None
        while True:
            try:
                polled = await self.consumer.getmany(timeout_ms=self.idle_poll_ms, max_records=self.max_records)
            except KafkaError:
                logger.exception("polling the request topics failed; trying again in a second")
                await asyncio.sleep(1)
                continue
            records = [r for rs in polled.values() for r in rs]
            if not records:
                continue
            try:
                await self.handle(records)
            except asyncio.CancelledError:
                raise
            except Exception:
                # nothing of this poll is committed: read it again (at-least-once; a forward may be published twice,
                # and readers drop duplicates by request id)
                logger.exception("screening a poll of %d records failed; reading it again in a second", len(records))
                await asyncio.sleep(1)
                for tp in polled:
                    self._rewind(tp, polled[tp][0].offset)
                continue
            for tp, rs in polled.items():
                self._handled[tp] = rs[-1].offset + 1
            if self._committing is None or self._committing.done():
                self._committing = asyncio.create_task(self._commit(), name="safety-commit")

    async def _commit(self) -> None:
        """Commits what was handled so far, then again while more was handled during the commit."""
        assert self.consumer is not None
        while self._handled:
            offsets, self._handled = self._handled, {}
            try:
                await self.consumer.commit(offsets)
            except Exception as exc:  # a rebalance: the partitions' next owner reads the uncommitted records again
                logger.warning("offset commit of %s failed (%s); they may be screened again", offsets, exc)

    def _rewind(self, tp: TopicPartition, offset: int) -> None:
        assert self.consumer is not None
        with contextlib.suppress(Exception):  # revoked meanwhile: the next owner starts from the committed offset
            self.consumer.seek(tp, offset)


class AssignmentLog(ConsumerRebalanceListener):
    """Logs which partitions of its stage (``request`` or ``moderation``) this instance screens after each rebalance:
    when an instance dies, the line in the others' logs shows who took its partitions over (from their committed
    offsets, so nothing is skipped)."""

    def __init__(self, stage: str) -> None:
        self._stage = stage

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(assigned))
        logger.info("screening %d %s partitions: %s", len(assigned), self._stage, names or "none")
