"""Kafka edges of the batcher: requests in (held by the scheduler), batches, errors and queue reports out, offsets
committed only once every record up to them is durably handed on.

Every entry point runs under one lock, so a rebalance never interleaves with a dispatch."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker
from opentelemetry import trace
from opentelemetry.trace import Span

from services.batcher.config import BatcherSettings
from services.batcher.metrics import BatcherMetrics
from services.batcher.offsets import OffsetLedger
from services.batcher.scheduling import Batch, CancelledIds, Held, ModelScheduler, WorkerReport
from shared.contracts import (
    BatchFormed,
    CompletionRequested,
    GenerationFailed,
    QueueDepthReported,
    RequestCancelled,
    WorkerStatusReported,
    utc_now,
)
from shared.kafka import (
    UNWRITABLE_TOPIC_ERRORS,
    Rejected,
    TopicCheck,
    dead_letter,
    dead_letter_unanswerable,
    decode,
    publish_message,
    record_headers,
)
from shared.settings import CommonSettings
from shared.telemetry import context_from

logger = logging.getLogger(__name__)

SERVICE = "batcher"


def source_of(held: Held) -> tuple[str, int, int]:
    """Where a held request was read: topic, partition, offset."""
    (topic, partition), offset = held.ref  # type: ignore[misc]
    return topic, partition, offset


Commit = Callable[[dict[Hashable, int]], Awaitable[bool]]


@dataclass
class BatcherDeps:
    settings: BatcherSettings
    common: CommonSettings
    broker: KafkaBroker
    model_by_topic: dict[str, str]
    tracer: trace.Tracer
    metrics: BatcherMetrics
    instance_id: str
    reply_topic_ready: TopicCheck
    clock: Callable[[], float] = time.monotonic
    model_contexts: dict[str, int] = field(default_factory=dict)  # registry max_model_len of the models known


@dataclass
class Batcher:
    deps: BatcherDeps
    commit: Commit | None = None
    schedulers: dict[str, ModelScheduler] = field(init=False)
    ledger: OffsetLedger = field(default_factory=OffsetLedger)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    generation: int = 0

    def __post_init__(self) -> None:
        policy = self.deps.settings.policy(self.deps.model_contexts)
        self.schedulers = {m: ModelScheduler(m, policy) for m in self.deps.model_by_topic.values()}
        self.cancelled = CancelledIds(policy.cancel_memory_s)

    # ---- requests -------------------------------------------------------------------------------------------------

    async def on_requests(self, records: Iterable[ConsumerRecord], generation: int) -> float | None:
        """Holds the records of one poll, unless a rebalance happened since the poll began (their partitions may no
        longer be ours; the consumer then seeks the ones still assigned back to their committed offsets)."""
        async with self.lock:
            if generation != self.generation:
                return None
            now = self.deps.clock()
            for record in records:
                await self._take(record, now)
            return await self._cycle()

    async def _take(self, record: ConsumerRecord, now: float) -> None:
        tp = (record.topic, record.partition)
        self.ledger.read(tp, record.offset)
        model = self.deps.model_by_topic.get(record.topic, "")
        received = self.deps.metrics.received
        try:
            request = decode(CompletionRequested, record)
            if request.model != model:
                raise Rejected(f"model {request.model!r} does not match topic {record.topic!r}")
        except Rejected as exc:
            await dead_letter(self.deps.broker, self.deps.common, record, str(exc), SERVICE)
            self.deps.metrics.dead_lettered.inc()
            received.labels(model, "dead_lettered").inc()
            self.ledger.resolved(tp, record.offset)
            return
        scheduler = self.schedulers[model]
        held_ref = scheduler.ref_of(request.request_id)
        if held_ref is not None:
            logger.info("request %s read again while held; duplicate ignored", request.request_id)
            received.labels(model, "duplicate").inc()
            if held_ref != (tp, record.offset):  # the same record read again stays pinned by the held copy
                self.ledger.resolved(tp, record.offset)
            return
        if request.request_id in self.cancelled:
            await self._tell(
                request, tp + (record.offset,), "cancelled", "the request was cancelled before it was scheduled", False
            )
            self.deps.metrics.cancelled.labels(model).inc()
            received.labels(model, "cancelled").inc()
            self.ledger.resolved(tp, record.offset)
            return
        if request.deadline_at is not None and request.deadline_at <= utc_now():
            await self._refuse_expired(request, tp + (record.offset,))
            received.labels(model, "expired").inc()
            self.ledger.resolved(tp, record.offset)
            return
        if not request.trace_context:
            # Internal producers may put trace context only in headers; keep it with the request through batching.
            carried = {k: v for k, v in record_headers(record).items() if k in ("traceparent", "tracestate")}
            request = request.model_copy(update={"trace_context": carried})
        scheduler.add(request, (tp, record.offset), now)
        received.labels(model, "held").inc()

    # ---- the dispatch cycle ---------------------------------------------------------------------------------------

    async def tick(self) -> float | None:
        """Releases what is due; returns the next instant (monotonic) something falls due, if any."""
        async with self.lock:
            return await self._cycle()

    async def _cycle(self) -> float | None:
        now, wall = self.deps.clock(), utc_now()
        for scheduler in self.schedulers.values():
            expired = scheduler.expire(wall)
            for i, held in enumerate(expired):
                try:
                    await self._refuse_expired(held.request, source_of(held))
                except Exception:
                    scheduler.restore(expired[i:])  # told next cycle; the offsets stay uncommitted meanwhile
                    raise
                self._resolve(held)
            batches = scheduler.release(now)
            # all of this release's batches go out at once and are confirmed together: one broker round trip, not
            # one per batch; if any fails, every one is held again (one that did go out is dispatched twice, which
            # at-least-once allows: readers drop duplicates by request id)
            sent: list[tuple[asyncio.Future[Any], list[Span], str]] = []
            try:
                for batch in batches:
                    sent.append(await self._send(batch, now))
                await asyncio.gather(*(confirmed for confirmed, _, _ in sent))
            except Exception:
                scheduler.restore(h for b in batches for h in b.items)
                raise
            finally:
                for _, spans, _ in sent:
                    for span in spans:
                        span.end()
            for batch, (_, _, batch_id) in zip(batches, sent, strict=True):
                self._dispatched(batch, batch_id, now)
        await self._commit()
        due = [d for s in self.schedulers.values() if (d := s.next_due(now)) is not None]
        return min(due, default=None)

    async def _send(self, batch: Batch, now: float) -> tuple[asyncio.Future[Any], list[Span], str]:
        """Publishes a batch without waiting for the broker; returns its confirmation, the requests' open spans (ended
        once it is confirmed) and the batch id."""
        formed = BatchFormed(batch_id=uuid.uuid4().hex, model=batch.model, requests=[h.request for h in batch.items])
        # A span per request in the request's own trace keeps one request one trace across every hop.
        spans = [
            self.deps.tracer.start_span(
                "ferry.batcher.dispatch",
                context=context_from(h.request.trace_context),
                attributes={
                    "ferry.request_id": h.request_id,
                    "ferry.batch_id": formed.batch_id,
                    "ferry.batch_size": len(batch.items),
                    "ferry.batch_reason": batch.reason,
                    "ferry.batch_profile": batch.profile,
                    "ferry.batcher_wait_ms": round((now - h.arrived) * 1000, 3),
                },
            )
            for h in batch.items
        ]
        try:
            confirmed = await publish_message(
                self.deps.broker,
                formed,
                self.deps.common.topics.batches(batch.model),
                key=formed.batch_id,
                confirm=False,
            )
        except BaseException:
            for span in spans:
                span.end()
            raise
        assert confirmed is not None
        return confirmed, spans, formed.batch_id

    def _dispatched(self, batch: Batch, batch_id: str, now: float) -> None:
        for held in batch.items:
            self._resolve(held)
        self.deps.metrics.observe_batch(batch, now)
        logger.info(
            "batch %s (%s, %s): %d request(s) for %s: %s",
            batch_id,
            batch.profile,
            batch.reason,
            len(batch.items),
            batch.model,
            [h.request_id for h in batch.items],
        )

    def _resolve(self, held: Held) -> None:
        topic, partition, offset = source_of(held)
        self.ledger.resolved((topic, partition), offset)

    async def _commit(self) -> None:
        points = self.ledger.commit_points()
        if points and self.commit is not None and await self.commit(points):
            self.ledger.committed(points)

    async def _refuse_expired(self, request: CompletionRequested, source: tuple[str, int, int]) -> None:
        await self._tell(
            request, source, "deadline_exceeded", "the request's deadline passed before it could be scheduled", True
        )
        self.deps.metrics.expired.labels(request.model).inc()
        logger.info("request %s expired before dispatch", request.request_id)

    async def _tell(
        self, request: CompletionRequested, source: tuple[str, int, int], code: str, message: str, retryable: bool
    ) -> None:
        """Tells the requester why its request (read at ``source``: topic, partition, offset) ends here; one whose
        reply topic takes nothing is dead-lettered instead, rather than told again at every cycle."""
        failure = GenerationFailed(
            request_id=request.request_id, sequence=0, code=code, message=message, retryable=retryable
        )
        try:
            await self.deps.reply_topic_ready(request.reply_topic)
            await publish_message(
                self.deps.broker, failure, request.reply_topic, key=request.request_id, request_id=request.request_id
            )
        except UNWRITABLE_TOPIC_ERRORS as exc:
            await dead_letter_unanswerable(self.deps.broker, self.deps.common, request, source, exc, SERVICE)
            self.deps.metrics.dead_lettered.inc()

    # ---- rebalance and shutdown ------------------------------------------------------------------------------------

    async def on_revoked(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Commits what is handed on, then drops the requests held from ``partitions`` uncommitted: their next owner
        reads them again."""
        revoked = set(partitions)
        async with self.lock:
            self.generation += 1
            try:
                await self._commit()
            except Exception:
                logger.warning("commit before revocation failed; the next owner may read some requests twice")
            dropped = 0
            for scheduler in self.schedulers.values():
                dropped += len(scheduler.remove(lambda h: h.ref[0] not in revoked))  # type: ignore[index]
            self.ledger.forget(revoked)
            if revoked:
                logger.info("partitions revoked: %s; %d held request(s) left for their next owner", revoked, dropped)

    async def drain(self) -> None:
        """Shutdown: hands on everything held and commits, so nothing waits for a rebalance."""
        async with self.lock:
            now = self.deps.clock()
            for scheduler in self.schedulers.values():
                for batch in scheduler.drain(now):
                    await self._dispatch(batch, now)
            await self._commit()

    # ---- cancellations and worker reports --------------------------------------------------------------------------

    async def on_cancellation(self, record: ConsumerRecord) -> None:
        try:
            cancel = decode(RequestCancelled, record)
        except Rejected as exc:
            logger.warning(
                "unreadable cancellation at %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc
            )
            return
        async with self.lock:
            self.cancelled.add(cancel.request_id, self.deps.clock())
            scheduler = self.schedulers.get(cancel.model)
            if scheduler is None or not scheduler.holds(cancel.request_id):
                return
            for held in scheduler.remove(lambda h: h.request_id != cancel.request_id):
                code = "deadline_exceeded" if cancel.reason == "deadline_exceeded" else "cancelled"
                await self._tell(
                    held.request, source_of(held), code, f"the request was cancelled ({cancel.reason})", False
                )
                self.deps.metrics.cancelled.labels(cancel.model).inc()
                self._resolve(held)
                logger.info("request %s cancelled while held (%s)", cancel.request_id, cancel.reason)
            await self._commit()

    async def on_worker_status(self, record: ConsumerRecord) -> None:
        try:
            status = decode(WorkerStatusReported, record)
        except Rejected as exc:
            logger.warning(
                "unreadable worker status at %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc
            )
            return
        now = self.deps.clock()
        age = max(0.0, (utc_now() - status.reported_at).total_seconds())
        report = WorkerReport(
            worker_id=status.worker_id,
            free_slots=max(0, status.max_running - status.running - status.waiting),
            free_tokens=status.free_tokens,
            waiting=status.waiting,
            draining=status.draining,
            interval_s=status.interval_seconds,
            made_at=now - age,
        )
        async with self.lock:
            for loaded in status.models:
                scheduler = self.schedulers.get(loaded.model)
                if scheduler is not None and loaded.state == "ready":
                    scheduler.capacity.report(report)
            await self._cycle()

    # ---- admission control -----------------------------------------------------------------------------------------

    async def report_queues(self) -> None:
        now = self.deps.clock()
        interval = self.deps.settings.queue_report_interval_s
        for model, scheduler in self.schedulers.items():
            depth = scheduler.depth(now)
            self.deps.metrics.observe_depth(model, depth)
            report = QueueDepthReported(
                model=model,
                batcher_id=self.deps.instance_id,
                waiting=depth.waiting,
                waiting_tokens=depth.waiting_tokens,
                waiting_by_priority=depth.waiting_by_priority,
                expected_wait_seconds=round(depth.expected_wait_s, 3),
                interval_seconds=interval,
            )
            await publish_message(self.deps.broker, report, self.deps.common.topics.queue_status, key=model)
