"""Kafka edge of the worker: batches in, generation tasks started at once (consuming never waits for generation, so a
long generation cannot exceed the poll interval), replies out to each request's reply topic.

Delivery is at-least-once: a batch's offset is committed only once every request in it (and in every earlier batch of
its partition) has published its final event. A worker that dies leaves its unfinished batches uncommitted; the group
hands its partitions to another worker within the session timeout, which generates them again from the start with the
same seed. Cancellations are read by every worker (no group) and abort the request in the engine.

A worker may host several models (hosting.py): it reads each one's batch topic in that model's consumer group, and a
batch for a model that is not loaded waits for its load while the loaded models keep generating. Worker-control
commands (preload, evict) are read by every worker (no group)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterable
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
from services.worker.hosting import ModelHost, ModelUnavailable
from services.worker.metrics import WorkerMetrics
from services.worker.offsets import OffsetTracker, RecentIds
from services.worker.variants import VariantUnavailable
from shared.contracts import (
    BatchFormed,
    CompletionFinished,
    CompletionRequested,
    GenerationFailed,
    Message,
    ModelEvictionRequested,
    ModelPreloadRequested,
    RequestCancelled,
    TokensGenerated,
    WorkerStatusReported,
    utc_now,
)
from shared.kafka import (
    MESSAGE_TYPE_HEADER,
    UNWRITABLE_TOPIC_ERRORS,
    DirectPublisher,
    Rejected,
    dead_letter,
    dead_letter_unanswerable,
    decode,
    publish_message,
    record_headers,
)
from shared.settings import CommonSettings
from shared.telemetry import context_from
from shared.topics import topic_safe

logger = logging.getLogger(__name__)

SERVICE = "worker"

_STOP_REASONS: dict[str, StopReason] = {
    "client_disconnected": "cancelled",
    "requested": "cancelled",
    "deadline_exceeded": "deadline_exceeded",
}

_CONTROL_TYPES: dict[str, type[ModelPreloadRequested | ModelEvictionRequested]] = {
    "ModelPreloadRequested": ModelPreloadRequested,
    "ModelEvictionRequested": ModelEvictionRequested,
}


@dataclass
class Flight:
    task: asyncio.Task[None]
    control: RequestControl
    model: str
    tenant_id: str | None = None
    variant: str | None = None  # known once the request is accepted


def tenant_share_priority(in_flight: Iterable[Flight], model: str, tenant_id: str | None) -> int:
    """The engine priority of a request taken now: how many of its tenant's requests for that model this worker holds
    already. Requests waiting for a seat in the engine go lowest first, then by arrival, so a tenant with one request
    waiting is served before a flood another tenant sent earlier, as the batcher shares between tenants before the
    worker. Priority classes keep the batcher's order (it ages them), so the engine does not reorder them."""
    return sum(1 for f in in_flight if f.model == model and f.tenant_id == tenant_id)


@dataclass
class WorkerDeps:
    settings: WorkerSettings
    common: CommonSettings
    broker: KafkaBroker
    replies: DirectPublisher  # every reply event (deltas above all), past the broker's per-record middlewares
    host: ModelHost  # the models this worker holds, loaded on demand within its memory budget
    model_id: str  # the model loaded at start (FERRY_WORKER_MODEL)
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
    consumers: dict[str, AIOKafkaConsumer] = field(default_factory=dict)  # batch topic -> its consumer, once started
    catalog: ModelCatalog | None = None  # where served-request counts go (the tiers are computed from them)
    served: dict[str, int] = field(default_factory=dict)  # requests finished per model since the last demand write
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
        # Deltas are not waited for; the final event is, and with it every delta before it (same key, same producer,
        # same order). Offsets are committed only after the final event is confirmed.
        await deps.replies.publish(
            event,
            request.reply_topic,
            key=request.request_id,
            request_id=request.request_id,
            confirm=not isinstance(event, TokensGenerated),
        )
        if isinstance(event, TokensGenerated | CompletionFinished):
            deps.metrics.replies(request.model, request.stream, event)

    async def run(
        request: CompletionRequested, control: RequestControl, priority: int, source: tuple[str, int, int]
    ) -> None:
        """Serves one request of the batch read at ``source`` (topic, partition, offset)."""
        attributes = {"ferry.request_id": request.request_id, "ferry.model": request.model}
        done = acquired = False
        variant: str | None = None
        with deps.tracer.start_as_current_span(
            "ferry.worker.generate", context=context_from(request.trace_context), attributes=attributes
        ):
            try:
                # before any engine time is spent: a reply topic that is not there yet waits for Kafka's metadata
                await deps.replies.wait_for_topic(request.reply_topic, common.reply_topic_wait_s)
                variant = deps.host.variant_for(request.model, request.variant, request.variant_fallback)
                if (flight := deps.in_flight.get(request.request_id)) is not None:
                    flight.variant = variant
                engine = await _acquire(deps, request, variant)
                acquired = True
                done = await serve_request(
                    engine, request, publish_reply, settings.coalesce_ms, control, deps.output_guard, priority
                )
            except (VariantUnavailable, ModelUnavailable, TimeoutError) as exc:
                code = {VariantUnavailable: "variant_unavailable", ModelUnavailable: "model_unavailable"}.get(
                    type(exc), "deadline_exceeded"
                )
                message = str(exc) or "the request's deadline passed while its model was loading"
                refusal = GenerationFailed(
                    request_id=request.request_id,
                    sequence=0,
                    code=code,
                    message=message,
                    retryable=code != "variant_unavailable",
                    param="variant" if code == "variant_unavailable" else None,
                )
                await publish_reply(request, refusal)
                done = True
            except UNWRITABLE_TOPIC_ERRORS as exc:
                # no later attempt would do better: park the request where an operator sees why, and move on (left
                # uncommitted, it would hold back the commits of every later batch of its partition)
                try:
                    await dead_letter_unanswerable(broker, common, request, source, exc, SERVICE)
                    done = True
                except Exception:
                    logger.exception("request %s: neither its replies nor its dead letter went out", request.request_id)
            except Exception:
                # Only a failed publish gets here (serve_request reports everything else to the requester): leave the
                # record uncommitted so the request is delivered again.
                logger.exception("request %s: its replies could not be published", request.request_id)
            finally:
                deps.in_flight.pop(request.request_id, None)
                if acquired:
                    deps.host.release(request.model, variant)
                if (stop_to_abort := control.stop_to_abort_s()) is not None:
                    deps.metrics.stop_to_abort(request.model, stop_to_abort)
                if (decision_to_abort := control.decision_to_abort_s()) is not None:
                    deps.metrics.cancel_to_abort(request.model, decision_to_abort)
        if done:
            deps.served[request.model] = deps.served.get(request.model, 0) + 1
            deps.finished.add(request.request_id)
            deps.offsets.finished(request.request_id)
            deps.progress.set()
        _apply_backpressure(deps)

    def subscribe(model_id: str) -> None:
        # MANUAL: FastStream never commits; offsets are committed by the committer task once batches are finished.
        # One consumer per hosted model, in that model's group: a model's partitions are shared by the workers that
        # host it, whichever other models each of them holds.
        topic = topics.batches(model_id)
        batches = broker.subscriber(
            topic,
            group_id=settings.group_prefix + model_id,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.MANUAL,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            listener=_Rebalance(deps),
        )

        async def on_batch(message: KafkaMessage) -> None:
            record = message.raw_message
            deps.consumers[topic] = message.consumer  # type: ignore[assignment]
            if deps.draining:
                return  # not taken: left uncommitted for the partition's next owner
            partition = TopicPartition(record.topic, record.partition)
            try:
                batch = decode(BatchFormed, record)
                if batch.model != model_id:
                    raise Rejected(f"batch for model {batch.model!r} reached the {model_id!r} batch topic")
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
                priority = tenant_share_priority(deps.in_flight.values(), model_id, request.tenant_id)
                source = (record.topic, record.partition, record.offset)
                task = asyncio.create_task(run(request, control, priority, source), name=request_id)
                deps.in_flight[request_id] = Flight(task, control, model_id, request.tenant_id)
            deps.offsets.taken(partition, record.offset, waiting_on)
            deps.progress.set()
            _apply_backpressure(deps)

        on_batch.__name__ = f"on_batch_{topic_safe(model_id).replace('-', '_').replace('.', '_')}"
        batches(on_batch)

    for model_id in deps.host.allowed:
        subscribe(model_id)

    # No group: every worker reads every cancellation from the moment it starts.
    @broker.subscriber(topics.cancellations, group_id=None, auto_offset_reset="latest", ack_policy=AckPolicy.MANUAL)
    async def on_cancellation(message: KafkaMessage) -> None:
        record = message.raw_message
        try:
            cancel = decode(RequestCancelled, record)
        except Rejected as exc:
            await dead_letter(broker, common, record, str(exc), SERVICE)
            return
        if not deps.host.hosts(cancel.model):
            return
        flight = deps.in_flight.get(cancel.request_id)
        if flight is None:
            deps.cancelled.add(cancel.request_id, cancel.reason)
            return
        if record.timestamp_type == 0:  # CreateTime: when the sender produced it, on the sender's clock
            produced = record.timestamp / 1000
            decided = cancel.cancelled_at.timestamp()
            # CreateTime is cut to whole milliseconds, so it may fall just before the decision
            deps.metrics.cancel_transit(cancel.model, max(0.0, produced - decided), max(0.0, time.time() - produced))
        if flight.control.stop(_STOP_REASONS.get(cancel.reason, "cancelled"), cancel.cancelled_at):
            logger.info("request %s cancelled (%s); aborting", cancel.request_id, cancel.reason)
            await _abort(deps, flight)

    # No group: every worker reads every command; worker_id narrows it to one worker.
    @broker.subscriber(topics.worker_control, group_id=None, auto_offset_reset="latest", ack_policy=AckPolicy.MANUAL)
    async def on_worker_control(message: KafkaMessage) -> None:
        record = message.raw_message
        kind = record_headers(record).get(MESSAGE_TYPE_HEADER, "")
        try:
            command: ModelPreloadRequested | ModelEvictionRequested = decode(_CONTROL_TYPES[kind], record)
        except KeyError:
            await dead_letter(broker, common, record, f"unknown worker-control message type {kind!r}", SERVICE)
            return
        except Rejected as exc:
            await dead_letter(broker, common, record, str(exc), SERVICE)
            return
        if command.worker_id not in (None, deps.worker_id) or deps.draining:
            return
        if isinstance(command, ModelPreloadRequested):
            if deps.host.preload(command.model, command.variant):
                logger.info("preload of %s (%s)", command.model, command.reason or "no reason given")
            else:
                logger.info("preload of %s (%s) ignored: not hosted here", command.model, command.variant or "default")
        elif await deps.host.evict(command.model, "requested"):
            logger.info("eviction of %s (%s)", command.model, command.reason or "no reason given")


async def _acquire(deps: WorkerDeps, request: CompletionRequested, variant: str) -> Engine:
    """The request's engine: at once when its model is loaded, else once it is (up to the request's deadline)."""
    if request.deadline_at is None:
        return await deps.host.acquire(request.model, variant)
    async with asyncio.timeout(max(0.0, (request.deadline_at - utc_now()).total_seconds())):
        return await deps.host.acquire(request.model, variant)


async def _abort(deps: WorkerDeps, flight: Flight) -> None:
    engine = deps.host.engine(flight.model, flight.variant)
    if engine is not None:  # else it still waits for its model: it sees its stop before generating
        await engine.abort(flight.task.get_name())


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
    by_topic: dict[str, dict[TopicPartition, int]] = {}
    for tp, offset in points.items():
        by_topic.setdefault(tp.topic, {})[tp] = offset
    for topic, topic_points in by_topic.items():
        consumer = deps.consumers.get(topic)
        if consumer is None:
            deps.offsets.failed(topic_points)
            continue
        assigned = consumer.assignment()
        ours = {tp: offset for tp, offset in topic_points.items() if tp in assigned}
        if not ours:
            continue
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
    pause = deps.draining or len(deps.in_flight) >= deps.settings.max_in_flight
    for consumer in deps.consumers.values():
        assigned = consumer.assignment()
        if pause:
            consumer.pause(*assigned)
        else:
            consumer.resume(*assigned)


def status_report(deps: WorkerDeps) -> WorkerStatusReported:
    """Capacity summed over the loaded engines; requests waiting for a model to load count as waiting."""
    engines = deps.host.engines()
    capacity = sum(e.kv_capacity_tokens() for e in engines)
    free = sum(e.free_tokens() for e in engines)
    loading = sum(1 for f in deps.in_flight.values() if deps.host.engine(f.model, f.variant) is None)
    return WorkerStatusReported(
        worker_id=deps.worker_id,
        models=deps.host.report(),
        running=sum(e.stats.running for e in engines),
        waiting=sum(e.stats.waiting for e in engines) + loading,
        max_running=sum(e.config.max_num_seqs for e in engines) or deps.settings.max_num_seqs,
        kv_cache_free=min(1.0, max(0.0, free / capacity)) if capacity else 1.0,
        free_tokens=free,
        draining=deps.draining,
        interval_seconds=deps.settings.status_interval_s,
        model_requests=deps.host.request_counts(),
    )


async def _demand_writer(deps: WorkerDeps) -> None:
    """Writes served-request counts and rereads the models' default variants every ``demand_flush_s``, and
    recomputes the tiers from the counts every ``tier_recompute_s``."""
    tiers_at = time.monotonic()
    while True:
        await asyncio.sleep(deps.settings.demand_flush_s)
        await flush_demand(deps)
        await read_default_variants(deps)
        every = deps.settings.tier_recompute_s
        if every and time.monotonic() - tiers_at >= every:
            tiers_at = time.monotonic()
            await recompute_tiers(deps)


async def read_default_variants(deps: WorkerDeps) -> None:
    if deps.catalog is None:
        return
    try:
        deps.host.model_defaults = await deps.catalog.default_variants(deps.host.allowed)
    except Exception:  # the defaults read last stay in force
        logger.exception("default variants not read")


async def recompute_tiers(deps: WorkerDeps) -> None:
    if deps.catalog is None:
        return
    try:
        plans = await deps.catalog.recompute_tiers(deps.settings.tier_policy(), utc_now())
    except Exception:  # the tiers computed last stay in force until the next try
        logger.exception("model tiers not recomputed")
        return
    logger.info("model tiers: %s", ", ".join(f"{p.model} {p.tier} ({p.requests_per_hour:.0f}/h)" for p in plans))


async def flush_demand(deps: WorkerDeps) -> None:
    served, deps.served = deps.served, {}
    if deps.catalog is None or not served:
        return
    try:
        await deps.catalog.record_demand(served, utc_now())
    except Exception:  # counted again next time rather than lost
        for model, count in served.items():
            deps.served[model] = deps.served.get(model, 0) + count
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
                await _abort(deps, flight)
        if handed_back:
            logger.info("handing back %d request(s)", len(handed_back))
            await asyncio.wait([f.task for f in handed_back], timeout=5)
        logger.info("drained in %.1f s, %d handed back", time.monotonic() - started, len(handed_back))
    if points := deps.offsets.due():
        await _commit(deps, points)
    await stop_background(deps)
    await flush_demand(deps)
