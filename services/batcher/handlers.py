"""Kafka edge of the batcher: decode, dead-letter the unusable, batch, publish, then commit."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from opentelemetry import trace

from services.batcher.batching import expired, group_into_batches, unique_by_request_id
from services.batcher.config import BatcherSettings
from shared.contracts import BatchFormed, CompletionRequested, GenerationFailed, utc_now
from shared.kafka import Rejected, dead_letter, decode, publish_message, record_headers
from shared.settings import CommonSettings
from shared.telemetry import context_from

logger = logging.getLogger(__name__)

SERVICE = "batcher"


@dataclass(frozen=True)
class BatcherDeps:
    settings: BatcherSettings
    common: CommonSettings
    broker: KafkaBroker
    model_by_topic: dict[str, str]
    tracer: trace.Tracer


def register(deps: BatcherDeps) -> None:
    settings, common, broker = deps.settings, deps.common, deps.broker
    topics = common.topics

    # NACK_ON_ERROR: offsets are committed only once every batch of the poll is published; a failure re-delivers.
    @broker.subscriber(
        *deps.model_by_topic,
        group_id=settings.group_id,
        batch=True,
        max_records=settings.max_batch_size,
        batch_timeout_ms=settings.max_wait_ms,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def on_requests(message: KafkaMessage) -> None:
        accepted: list[CompletionRequested] = []
        for record in message.raw_message:
            try:
                request = decode(CompletionRequested, record)
                if request.model != deps.model_by_topic[record.topic]:
                    raise Rejected(f"model {request.model!r} does not match topic {record.topic!r}")
            except Rejected as exc:
                await dead_letter(broker, common, record, str(exc), SERVICE)
                continue
            if not request.trace_context:
                # Internal producers may put trace context only in headers; keep it with the request through batching.
                carried = {k: v for k, v in record_headers(record).items() if k in ("traceparent", "tracestate")}
                request = request.model_copy(update={"trace_context": carried})
            accepted.append(request)

        now = utc_now()
        live = []
        for request in unique_by_request_id(accepted):
            if expired(request, now):
                await _refuse_expired(broker, request)
            else:
                live.append(request)

        for batch_requests in group_into_batches(live, settings.max_batch_size):
            batch = BatchFormed(batch_id=uuid.uuid4().hex, model=batch_requests[0].model, requests=batch_requests)
            # The consume span of a batch starts its own trace (linked to each record); a span per request in the
            # request's own trace keeps one request one trace across every hop.
            spans = [
                deps.tracer.start_span(
                    "ferry.batcher.dispatch",
                    context=context_from(r.trace_context),
                    attributes={
                        "ferry.request_id": r.request_id,
                        "ferry.batch_id": batch.batch_id,
                        "ferry.batch_size": len(batch_requests),
                    },
                )
                for r in batch_requests
            ]
            try:
                await publish_message(broker, batch, topics.batches(batch.model), key=batch.batch_id)
            finally:
                for span in spans:
                    span.end()
            logger.info(
                "batch %s: %d request(s) for %s: %s",
                batch.batch_id,
                len(batch_requests),
                batch.model,
                [r.request_id for r in batch_requests],
            )


async def _refuse_expired(broker: KafkaBroker, request: CompletionRequested) -> None:
    failure = GenerationFailed(
        request_id=request.request_id,
        sequence=0,
        code="deadline_exceeded",
        message="the request's deadline passed before it could be scheduled",
        retryable=True,
    )
    await publish_message(broker, failure, request.reply_topic, key=request.request_id, request_id=request.request_id)
    logger.info("request %s expired before batching", request.request_id)
