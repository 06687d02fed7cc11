"""Pre-start step run once before the services: waits for Kafka and PostgreSQL, applies migrations, seeds the model
registry and creates every model's topics. Idempotent. ``python -m shared.prepare`` prints the served models."""

from __future__ import annotations

import asyncio
import logging

from shared.db import connect_pool, migrate
from shared.kafka import ensure_topics, wait_for_kafka
from shared.logging import configure_logging
from shared.registry import ModelRegistry, read_seed
from shared.settings import CommonSettings


async def prepare(settings: CommonSettings) -> None:
    pool = await connect_pool(settings.postgres_dsn)
    try:
        await migrate(pool)
        registry = ModelRegistry(pool)
        await registry.seed(read_seed())
        models = await registry.enabled()
    finally:
        await pool.close()
    await wait_for_kafka(settings)
    topics = settings.topics
    await ensure_topics(settings, [n for m in models for n in (topics.requests(m.id), topics.batches(m.id))])
    await ensure_topics(
        settings,
        [topics.dead_letter, topics.cancellations, topics.worker_status, topics.queue_status, topics.worker_control],
        partitions=1,
    )
    # safety: the stage forwards screened prompts per model and collects flagged content for review
    await ensure_topics(settings, [topics.screened(m.id) for m in models])
    await ensure_topics(settings, [topics.safety_flagged], partitions=1)
    for m in models:
        print(f"{m.id}\t{m.source}\t{'default' if m.default else ''}")


if __name__ == "__main__":
    configure_logging("prepare", CommonSettings().log_level)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    asyncio.run(prepare(CommonSettings()))
