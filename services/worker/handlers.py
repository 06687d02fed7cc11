"""Kafka edge of the worker: batches in, generation tasks started at once (consuming never waits for generation, so a
long generation cannot exceed the poll interval), replies out to each request's reply topic."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from opentelemetry import trace

from services.safety.output import OutputGuard
from services.worker.config import WorkerSettings
from services.worker.engine import Engine
from services.worker.generation import serve_request
from shared.contracts import BatchFormed, CompletionRequested, Message
from shared.kafka import Rejected, dead_letter, decode, publish_message
from shared.settings import CommonSettings
from shared.telemetry import context_from

logger = logging.getLogger(__name__)

SERVICE = "worker"


@dataclass
class WorkerDeps:
    settings: WorkerSettings
    common: CommonSettings
    broker: KafkaBroker
    engine: Engine
    model_id: str
    tracer: trace.Tracer
    output_guard: OutputGuard | None = None  # output screening (services/safety/wiring.py); None: off
    in_flight: dict[str, asyncio.Task[None]] = field(default_factory=dict)


def register(deps: WorkerDeps) -> None:
    broker, common = deps.broker, deps.common

    async def publish_reply(request: CompletionRequested, event: Message) -> None:
        await publish_message(broker, event, request.reply_topic, key=request.request_id, request_id=request.request_id)

    async def run(request: CompletionRequested) -> None:
        attributes = {"ferry.request_id": request.request_id, "ferry.model": request.model}
        with deps.tracer.start_as_current_span(
            "ferry.worker.generate", context=context_from(request.trace_context), attributes=attributes
        ):
            try:
                await serve_request(deps.engine, request, publish_reply, deps.settings.coalesce_ms, deps.output_guard)
            finally:
                deps.in_flight.pop(request.request_id, None)

    # ACK_FIRST: the batch is in the engine once the handler returns. A worker killed mid-generation loses those
    # requests (the worker issue replaces this with commit-after-completion).
    @broker.subscriber(
        common.topics.batches(deps.model_id),
        group_id=deps.settings.group_prefix + deps.model_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.ACK_FIRST,
    )
    async def on_batch(message: KafkaMessage) -> None:
        record = message.raw_message
        try:
            batch = decode(BatchFormed, record)
            if batch.model != deps.model_id:
                raise Rejected(f"batch for model {batch.model!r} reached the worker of {deps.model_id!r}")
        except Rejected as exc:
            await dead_letter(broker, common, record, str(exc), SERVICE)
            return
        for request in batch.requests:
            if request.request_id in deps.in_flight:
                logger.info("request %s already running; duplicate ignored", request.request_id)
                continue
            deps.in_flight[request.request_id] = asyncio.create_task(run(request), name=request.request_id)


async def drain(deps: WorkerDeps, seconds: float) -> None:
    """Shutdown: lets running generations finish for a while, then aborts the rest; each aborted request still gets
    its final CompletionFinished, with finish_reason "abort"."""
    if not deps.in_flight:
        return
    logger.info("draining %d request(s)", len(deps.in_flight))
    _, pending = await asyncio.wait(list(deps.in_flight.values()), timeout=seconds)
    for task in pending:
        await deps.engine.abort(task.get_name())
    if pending:
        await asyncio.wait(pending, timeout=5)
