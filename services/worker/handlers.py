"""Kafka edge of the worker: batches in, generation tasks started at once (consuming never waits for generation, so a
long generation cannot exceed the poll interval), replies out to each request's reply topic.

Delivery is at-least-once: a batch's offset is committed only once every request in it (and in every earlier batch of
its partition) has published its final event. A worker that dies leaves its unfinished batches uncommitted; the group
hands its partitions to another worker within the session timeout, which generates them again from the start with the
same seed. Cancellations are read by every worker (no group) and abort the request in the engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from opentelemetry import trace

from services.safety.output import OutputGuard
from services.worker.catalog import ModelCatalog
from services.worker.config import WorkerSettings
from services.worker.engine import Engine
from services.worker.generation import RequestControl, StopReason, serve_request
from services.worker.metrics import WorkerMetrics
from services.worker.offsets import OffsetTracker, RecentIds
from services.worker.variants import VariantUnavailable, serving_variant
from shared.contracts import (
    BatchFormed,
    CompletionFinished,
    CompletionRequested,
    GenerationFailed,
    LoadedModel,
    Message,
    RequestCancelled,
    TokensGenerated,
    WorkerStatusReported,
    utc_now,
)
from shared.kafka import Rejected, dead_letter, decode, publish_message
from shared.settings import CommonSettings
from shared.telemetry import context_from

logger = logging.getLogger(__name__)

SERVICE = "worker"

_STOP_REASONS: dict[str, StopReason] = {
    "client_disconnected": "cancelled",
    "requested": "cancelled",
    "deadline_exceeded": "deadline_exceeded",
}


@dataclass
class Flight:
    task: asyncio.Task[None]
    control: RequestControl


@dataclass
class WorkerDeps:
    settings: WorkerSettings
    common: CommonSettings
    broker: KafkaBroker
    engine: Engine
    model_id: str
    tracer: trace.Tracer
    metrics: WorkerMetrics
    output_guard: OutputGuard | None = None  # output screening (services/safety/wiring.py); None: off
    worker_id: str = ""
    in_flight: dict[str, Flight] = field(default_factory=dict)
    offsets: OffsetTracker[TopicPartition] = field(default_factory=OffsetTracker)
    finished: RecentIds = field(default_factory=lambda: RecentIds(10_000))  # a redelivered copy is not redone
    cancelled: RecentIds = field(default_factory=lambda: RecentIds(10_000))  # cancels that beat their request
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    draining: bool = False
    consumer: AIOKafkaConsumer | None = None  # the batch consumer, once started
    catalog: ModelCatalog | None = None  # where served-request counts go (the tiers are computed from them)
    served: int = 0  # requests finished since the last demand write
    background: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.worker_id:
            self.worker_id = self.settings.worker_id or f"{socket.gethostname()}:{self.settings.port}:{os.getpid()}"


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """On revocation, commits what is finished in the partitions leaving; requests still generating from them go on
    (their replies still reach the requester) but nothing past them is committed, so the next owner redoes them. When a
    partition comes back, its redelivered requests join the generations already running here."""

    def __init__(self, deps: WorkerDeps) -> None:
        self._deps = deps

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        points = self._deps.offsets.forget(set(revoked))
        if points:
            await _commit(self._deps, points, forget_on_failure=True)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        _apply_backpressure(self._deps)


def register(deps: WorkerDeps) -> None:
    broker, common, settings = deps.broker, deps.common, deps.settings
    topics = common.topics

    async def publish_reply(request: CompletionRequested, event: Message) -> None:
        # Deltas are not waited for; the final event is, and with it every delta before it (same key, same order).
        # Offsets are committed only after the final event is confirmed.
        await publish_message(
            broker,
            event,
            request.reply_topic,
            key=request.request_id,
            request_id=request.request_id,
            confirm=not isinstance(event, TokensGenerated),
        )
        if isinstance(event, TokensGenerated | CompletionFinished):
            deps.metrics.replies(request.stream, event)

    async def run(request: CompletionRequested, control: RequestControl) -> None:
        attributes = {"ferry.request_id": request.request_id, "ferry.model": request.model}
        done = False
        with deps.tracer.start_as_current_span(
            "ferry.worker.generate", context=context_from(request.trace_context), attributes=attributes
        ):
            try:
                serving_variant(request.variant, request.variant_fallback, deps.engine.variant, deps.engine.on_cpu)
                done = await serve_request(
                    deps.engine, request, publish_reply, settings.coalesce_ms, control, deps.output_guard
                )
            except VariantUnavailable as exc:
                refusal = GenerationFailed(
                    request_id=request.request_id, sequence=0, code="variant_unavailable", message=str(exc)
                )
                await publish_reply(request, refusal)
                done = True
            except Exception:
                # Only a failed publish gets here (serve_request reports everything else to the requester): leave the
                # record uncommitted so the request is delivered again.
                logger.exception("request %s: its replies could not be published", request.request_id)
            finally:
                deps.in_flight.pop(request.request_id, None)
                if control.stop_requested_at is not None and control.ended_at is not None:
                    deps.metrics.stop_to_abort.observe(max(0.0, control.ended_at - control.stop_requested_at))
        if done:
            deps.served += 1
            deps.finished.add(request.request_id)
            deps.offsets.finished(request.request_id)
            deps.progress.set()
        _apply_backpressure(deps)

    # MANUAL: FastStream never commits; offsets are committed by the committer task once batches are finished.
    batches = broker.subscriber(
        topics.batches(deps.model_id),
        group_id=settings.group_prefix + deps.model_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        listener=_Rebalance(deps),
    )

    @batches
    async def on_batch(message: KafkaMessage) -> None:
        record = message.raw_message
        deps.consumer = message.consumer  # type: ignore[assignment]
        if deps.draining:
            return  # not taken: left uncommitted for the partition's next owner
        partition = TopicPartition(record.topic, record.partition)
        try:
            batch = decode(BatchFormed, record)
            if batch.model != deps.model_id:
                raise Rejected(f"batch for model {batch.model!r} reached the worker of {deps.model_id!r}")
        except Rejected as exc:
            await dead_letter(broker, common, record, str(exc), SERVICE)
            deps.offsets.taken(partition, record.offset, [])
            deps.progress.set()
            return
        waiting_on = []
        for request in batch.requests:
            request_id = request.request_id
            if request_id in deps.in_flight:
                logger.info("request %s delivered again while generating; joined", request_id)
                waiting_on.append(request_id)
                continue
            if request_id in deps.finished:
                logger.info("request %s delivered again after it finished here; skipped", request_id)
                continue
            control = RequestControl()
            if (reason := deps.cancelled.get(request_id)) is not None:
                control.stop(_STOP_REASONS.get(reason, "cancelled"))
            waiting_on.append(request_id)
            deps.in_flight[request_id] = Flight(asyncio.create_task(run(request, control), name=request_id), control)
        deps.offsets.taken(partition, record.offset, waiting_on)
        deps.progress.set()
        _apply_backpressure(deps)

    # No group: every worker reads every cancellation from the moment it starts.
    @broker.subscriber(topics.cancellations, group_id=None, auto_offset_reset="latest", ack_policy=AckPolicy.MANUAL)
    async def on_cancellation(message: KafkaMessage) -> None:
        record = message.raw_message
        try:
            cancel = decode(RequestCancelled, record)
        except Rejected as exc:
            await dead_letter(broker, common, record, str(exc), SERVICE)
            return
        if cancel.model != deps.model_id:
            return
        flight = deps.in_flight.get(cancel.request_id)
        if flight is None:
            deps.cancelled.add(cancel.request_id, cancel.reason)
            return
        if flight.control.stop(_STOP_REASONS.get(cancel.reason, "cancelled")):
            logger.info("request %s cancelled (%s); aborting", cancel.request_id, cancel.reason)
            await deps.engine.abort(cancel.request_id)


async def start_background(deps: WorkerDeps) -> None:
    """Started after the broker: the committer and the heartbeat."""
    deps.background = [
        asyncio.create_task(_committer(deps), name="offset-committer"),
        asyncio.create_task(_heartbeat(deps), name="worker-status"),
        asyncio.create_task(_demand_writer(deps), name="demand-writer"),
    ]


async def stop_background(deps: WorkerDeps) -> None:
    for task in deps.background:
        task.cancel()
    for task in deps.background:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _committer(deps: WorkerDeps) -> None:
    while True:
        await deps.progress.wait()
        deps.progress.clear()
        if points := deps.offsets.due():
            await _commit(deps, points)
        await asyncio.sleep(deps.settings.commit_interval_ms / 1000)


async def _commit(deps: WorkerDeps, points: dict[TopicPartition, int], forget_on_failure: bool = False) -> None:
    consumer = deps.consumer
    if consumer is None:
        deps.offsets.failed(points)
        return
    assigned = consumer.assignment()
    ours = {tp: offset for tp, offset in points.items() if tp in assigned}
    if not ours:
        return
    try:
        await consumer.commit(ours)
        logger.debug("committed %s", ours)
    except KafkaError as exc:  # a rebalance is under way; the next owner reads from the last commit
        logger.warning("commit of %s failed: %s", ours, exc)
        if not forget_on_failure:
            deps.offsets.failed(ours)


def _apply_backpressure(deps: WorkerDeps) -> None:
    """Pauses the batch partitions while the worker holds ``max_in_flight`` requests (or drains). Paused, the consumer
    still polls, so the group does not think it is stuck."""
    consumer = deps.consumer
    if consumer is None:
        return
    assigned = consumer.assignment()
    if deps.draining or len(deps.in_flight) >= deps.settings.max_in_flight:
        consumer.pause(*assigned)
    else:
        consumer.resume(*assigned)


def status_report(deps: WorkerDeps) -> WorkerStatusReported:
    stats = deps.engine.stats
    return WorkerStatusReported(
        worker_id=deps.worker_id,
        models=[LoadedModel(model=deps.model_id, variant=deps.engine.variant, state="ready")],
        running=stats.running,
        waiting=stats.waiting,
        max_running=deps.engine.config.max_num_seqs,
        kv_cache_free=min(1.0, max(0.0, 1.0 - stats.kv_cache_usage)),
        free_tokens=deps.engine.free_tokens(),
        draining=deps.draining,
        interval_seconds=deps.settings.status_interval_s,
    )


async def _demand_writer(deps: WorkerDeps) -> None:
    while True:
        await asyncio.sleep(deps.settings.demand_flush_s)
        await flush_demand(deps)


async def flush_demand(deps: WorkerDeps) -> None:
    served, deps.served = deps.served, 0
    if deps.catalog is None or not served:
        return
    try:
        await deps.catalog.record_demand({deps.model_id: served}, utc_now())
    except Exception:  # counted again next time rather than lost
        deps.served += served
        logger.exception("demand not recorded")


async def _heartbeat(deps: WorkerDeps) -> None:
    topic = deps.common.topics.worker_status
    while True:
        try:
            await publish_message(deps.broker, status_report(deps), topic, key=deps.worker_id)
        except Exception:  # a missed heartbeat must not stop the next one
            logger.exception("worker status not published")
        await asyncio.sleep(deps.settings.status_interval_s)


async def drain(deps: WorkerDeps, seconds: float) -> None:
    """Shutdown, before the consumer leaves its group: stop taking work, let running generations finish for
    ``seconds``, then hand the rest back (aborted, no final event, left uncommitted so another worker redoes them),
    and commit what finished."""
    deps.draining = True
    _apply_backpressure(deps)
    with contextlib.suppress(Exception):
        await publish_message(deps.broker, status_report(deps), deps.common.topics.worker_status, key=deps.worker_id)
    flights = list(deps.in_flight.values())
    if flights:
        started = time.monotonic()
        logger.info("draining %d request(s) for up to %.0f s", len(flights), seconds)
        _, pending = await asyncio.wait([f.task for f in flights], timeout=seconds)
        handed_back = [f for f in flights if f.task in pending]
        for flight in handed_back:
            if flight.control.stop("handed_back"):
                await deps.engine.abort(flight.task.get_name())
        if handed_back:
            logger.info("handing back %d request(s)", len(handed_back))
            await asyncio.wait([f.task for f in handed_back], timeout=5)
        logger.info("drained in %.1f s, %d handed back", time.monotonic() - started, len(handed_back))
    if points := deps.offsets.due():
        await _commit(deps, points)
    await stop_background(deps)
    await flush_demand(deps)
