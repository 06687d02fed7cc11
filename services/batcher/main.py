"""Entrypoint: ``python -m services.batcher.main``."""

from __future__ import annotations

import logging
import os
import socket

import asyncpg
from faststream.asgi import AsgiResponse, get
from faststream.asgi.types import Scope
from prometheus_client import CollectorRegistry

from services.batcher.config import BatcherSettings, input_topic
from services.batcher.consumer import Consumers
from services.batcher.handlers import SERVICE, Batcher, BatcherDeps
from services.batcher.metrics import BatcherMetrics
from shared.kafka import DirectPublisher, broker_producer, ensure_topics, new_broker, wait_for_kafka, warm_up_producer
from shared.logging import configure_logging
from shared.registry import enabled_models
from shared.runtime import GarbageCollection, kafka_service_app, run, serve
from shared.settings import CommonSettings
from shared.telemetry import setup_tracing

logger = logging.getLogger(__name__)


async def main() -> None:
    common, settings = CommonSettings(), BatcherSettings()
    configure_logging(SERVICE, common.log_level)
    provider = setup_tracing(SERVICE, common)
    topics = common.topics
    try:
        try:  # with the models named, the registry only adds their contexts: not worth a long wait
            models = await enabled_models(common.postgres_dsn, wait_seconds=5 if settings.models else 60)
        except (OSError, asyncpg.PostgresError):
            if not settings.models:
                raise  # nothing else says which models to batch for
            # the models are named: batch without the registry, as before it gave each model's context
            logger.warning("model registry unreadable: each request weighs its max_tokens, whatever its context")
            models = []
        model_ids = settings.models or [m.id for m in models]
        by_topic = {input_topic(topics, m): m for m in model_ids}
        await wait_for_kafka(common)
        await ensure_topics(common, [*by_topic, *(topics.batches(m) for m in model_ids)])
        await ensure_topics(common, [topics.cancellations, topics.worker_status])
        await ensure_topics(common, [topics.queue_status], partitions=1)  # as the ingress, which reads it, creates it
        registry = CollectorRegistry()
        registry.register(GarbageCollection())
        broker = new_broker(common, SERVICE, provider, registry)
        reply_topics = DirectPublisher(common, client_id=f"ferry-{SERVICE}-reply-topics")
        batcher = Batcher(
            BatcherDeps(
                settings=settings,
                common=common,
                broker=broker,
                model_by_topic=by_topic,
                tracer=provider.get_tracer(__name__),
                metrics=BatcherMetrics(registry),
                instance_id=settings.instance_id or f"{socket.gethostname()}-{os.getpid()}",
                model_contexts={m.id: m.max_model_len for m in models},
                reply_topic_ready=lambda topic: reply_topics.wait_for_topic(topic, common.reply_topic_wait_s),
            )
        )
        consumers = Consumers(
            batcher,
            common.kafka_bootstrap,
            request_topics=list(by_topic),
            cancellations_topic=topics.cancellations,
            worker_status_topic=topics.worker_status,
        )

        async def warm_up() -> None:
            batch_topics = {topics.batches(m) for m in model_ids}
            await warm_up_producer(broker_producer(broker), batch_topics.__contains__)

        @get
        async def health(scope: Scope) -> AsgiResponse:
            alive = consumers.healthy and await broker.ping(5.0)
            return AsgiResponse(b"", 204) if alive else AsgiResponse(b"consumers stopped", 500)

        app = kafka_service_app(
            broker,
            registry,
            health=health,
            after_startup=[reply_topics.start, warm_up, consumers.start],
            on_shutdown=[consumers.stop, reply_topics.stop],
        )
        await serve(app, settings.host, settings.port)
    finally:
        provider.shutdown()


if __name__ == "__main__":
    run(main())
