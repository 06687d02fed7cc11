"""Entrypoint: ``python -m services.batcher.main``."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from services.batcher.config import BatcherSettings
from services.batcher.handlers import SERVICE, BatcherDeps, register
from shared.kafka import ensure_topics, new_broker, wait_for_kafka
from shared.logging import configure_logging
from shared.registry import enabled_models
from shared.runtime import kafka_service_app, serve
from shared.settings import CommonSettings
from shared.telemetry import setup_tracing


async def main() -> None:
    common, settings = CommonSettings(), BatcherSettings()
    configure_logging(SERVICE, common.log_level)
    provider = setup_tracing(SERVICE, common)
    try:
        model_ids = settings.models or [m.id for m in await enabled_models(common.postgres_dsn)]
        by_topic = {common.topics.screened(m): m for m in model_ids}  # prompts the safety stage let through
        await wait_for_kafka(common)
        await ensure_topics(common, [*by_topic, *(common.topics.batches(m) for m in model_ids)])
        metrics = CollectorRegistry()
        broker = new_broker(common, SERVICE, provider, metrics)
        register(
            BatcherDeps(
                settings=settings,
                common=common,
                broker=broker,
                model_by_topic=by_topic,
                tracer=provider.get_tracer(__name__),
            )
        )
        await serve(kafka_service_app(broker, metrics), settings.host, settings.port)
    finally:
        provider.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
