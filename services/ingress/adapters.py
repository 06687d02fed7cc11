"""Adapters of the ingress: its reply topic (aiokafka), the request publisher (FastStream) and the model catalog
(PostgreSQL registry with a short cache)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from faststream.kafka import KafkaBroker
from opentelemetry import trace
from pydantic import ValidationError

from shared.contracts import (
    CompletionFinished,
    CompletionRequested,
    GenerationFailed,
    ReplyEvent,
    reply_event_adapter,
    utc_now,
)
from shared.kafka import dead_letter, ensure_topics, publish_message, record_headers
from shared.registry import ModelRecord, ModelRegistry
from shared.settings import CommonSettings
from shared.telemetry import context_from

logger = logging.getLogger(__name__)


class ReplyListener:
    """Reads this instance's reply topic and routes each event to the request waiting for it.

    Partitions are assigned (not subscribed through a group) and positioned at their end before the instance takes
    requests, so no reply can arrive before the listener looks for it."""

    def __init__(self, common: CommonSettings, topic: str, broker: KafkaBroker, tracer: trace.Tracer) -> None:
        self._common, self.topic, self._broker, self._tracer = common, topic, broker, tracer
        self._queues: dict[str, asyncio.Queue[ReplyEvent]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await ensure_topics(self._common, [self.topic], partitions=1)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._common.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id="ferry-ingress-replies",
            auto_offset_reset="latest",
        )
        await consumer.start()
        partitions = consumer.partitions_for_topic(self.topic) or {0}
        assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_end(*assigned)
        for tp in assigned:
            await consumer.position(tp)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="reply-listener")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer:
            await self._consumer.stop()

    def expect(self, request_id: str, deadline_at: datetime) -> AsyncIterator[ReplyEvent]:
        """Registers the request (call it before publishing) and returns its reply events, up to the final one; the
        iterator raises TimeoutError at the deadline. The queue is bound now, not at the first read, so replies that
        arrive before the reader starts are kept."""
        queue: asyncio.Queue[ReplyEvent] = asyncio.Queue()
        self._queues[request_id] = queue
        return self._read(request_id, queue, deadline_at)

    @property
    def waiting(self) -> int:
        """Requests registered and not finished yet."""
        return len(self._queues)

    async def _read(
        self, request_id: str, queue: asyncio.Queue[ReplyEvent], deadline_at: datetime
    ) -> AsyncIterator[ReplyEvent]:
        try:
            while True:
                remaining = (deadline_at - utc_now()).total_seconds()
                if remaining <= 0:
                    raise TimeoutError
                event = await asyncio.wait_for(queue.get(), remaining)
                yield event
                if isinstance(event, CompletionFinished | GenerationFailed):
                    return
        finally:
            self._queues.pop(request_id, None)

    def forget(self, request_id: str) -> None:
        self._queues.pop(request_id, None)

    async def _run(self) -> None:
        assert self._consumer is not None
        async for record in self._consumer:
            try:
                await self._route(record)
            except Exception:  # one bad record must not stop the replies of every other request
                logger.exception("reply %s[%d]@%d could not be routed", record.topic, record.partition, record.offset)

    async def _route(self, record: ConsumerRecord) -> None:
        try:
            event = reply_event_adapter.validate_json(record.value or b"")
        except ValidationError as exc:
            reason = f"invalid reply event: {exc.errors()[0]['msg']}"
            await dead_letter(self._broker, self._common, record, reason, "ingress")
            return
        queue = self._queues.get(event.request_id)
        if queue is None:
            return  # the client is gone, or the event is a redelivery of a finished request
        with self._tracer.start_as_current_span(
            "ferry.ingress.reply",
            context=context_from(record_headers(record)),
            attributes={"ferry.request_id": event.request_id, "ferry.event": event.event},
        ):
            queue.put_nowait(event)
        if isinstance(event, CompletionFinished | GenerationFailed):
            # the request is done here, even if its reader never resumes (a client gone, a failure raised mid-read)
            self._queues.pop(event.request_id, None)


class RequestPublisher:
    def __init__(self, common: CommonSettings, broker: KafkaBroker) -> None:
        self._common, self._broker = common, broker

    async def publish(self, request: CompletionRequested) -> None:
        await publish_message(
            self._broker,
            request,
            self._common.topics.requests(request.model),
            key=request.request_id,
            request_id=request.request_id,
        )


class ModelCatalog:
    """Registry lookups for every request, cached for a few seconds so the database is not on the hot path."""

    def __init__(self, registry: ModelRegistry, ttl_s: float) -> None:
        self._registry, self._ttl_s = registry, ttl_s
        self._models: dict[str, ModelRecord] = {}
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def all(self) -> dict[str, ModelRecord]:
        async with self._lock:
            if time.monotonic() - self._loaded_at > self._ttl_s:
                self._models = {m.id: m for m in await self._registry.enabled()}
                self._loaded_at = time.monotonic()
        return self._models
