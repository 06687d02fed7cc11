"""Entrypoint: ``python -m services.safety.main``. One process runs the prompt screening stage, persists flagged items
and serves the review UI under /review, with /health and /metrics."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from services.safety.cache import ScreeningCache
from services.safety.config import SafetySettings
from services.safety.consumer import StageConsumer
from services.safety.guard import GuardCheck
from services.safety.handlers import SERVICE, SafetyDeps, moderate, register, screen_prompts
from services.safety.labels import LABELED_FILE
from services.safety.metrics import SafetyMetrics
from services.safety.prompt_tokens import ModelTokenizers
from services.safety.screening import Classifier, Screener
from services.safety.store import PolicyStore, ReviewStore, UserStore
from services.safety.sweeps import Sweeper
from services.safety.web import ReviewDeps, install_error_pages, router
from shared.contracts import Message
from shared.db import connect_pool
from shared.kafka import (
    DirectPublisher,
    broker_producer,
    ensure_topics,
    new_broker,
    publish_message,
    wait_for_kafka,
    warm_up_producer,
)
from shared.logging import configure_logging
from shared.registry import ModelRegistry
from shared.runtime import GarbageCollection, run, serve
from shared.settings import CommonSettings
from shared.telemetry import setup_tracing

logger = logging.getLogger(__name__)


def build_screener(settings: SafetySettings) -> Screener:
    """The classifiers the settings ask for (loading the embedding model takes about ten seconds)."""
    from services.safety.classifiers import EmbeddingClassifier, InjectionClassifier, load_embedder

    classifiers: list[Classifier] = []
    if settings.injection:
        classifiers.append(InjectionClassifier())
    if settings.embedding:
        embedder = load_embedder(
            settings.torch_threads, settings.embedding_int8, settings.embedding_runtime, settings.embedding_cache_dir
        )
        classifiers.append(EmbeddingClassifier.trained(embedder, max_windows=settings.embedding_max_windows))
    cache = None
    if settings.screening_cache_ttl_s > 0 and classifiers:
        ttl, entries = settings.screening_cache_ttl_s, settings.screening_cache_entries
        cache = ScreeningCache(classifier_version(settings), ttl, entries)
    return Screener(classifiers, (), tuple(settings.deny_terms), cache)


def classifier_version(settings: SafetySettings) -> str:
    """What the cached scores depend on: which classifiers, how the embedding model runs, the data it is trained on."""
    data = hashlib.sha256(LABELED_FILE.read_bytes()).hexdigest()[:16]
    return (
        f"injection={settings.injection};embedding={settings.embedding};int8={settings.embedding_int8};"
        f"runtime={settings.embedding_runtime};windows={settings.embedding_max_windows};data={data}"
    )


def build_app(settings: SafetySettings, common: CommonSettings) -> FastAPI:
    metrics = CollectorRegistry()
    metrics.register(GarbageCollection())
    safety_metrics = SafetyMetrics(metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        provider = setup_tracing(SERVICE, common)
        pool = await connect_pool(common.postgres_dsn)
        try:
            model_ids = settings.models or [m.id for m in await ModelRegistry(pool).enabled()]
            topics = common.topics
            by_topic = {topics.requests(m): m for m in model_ids}
            screener = await asyncio.to_thread(build_screener, settings)
            await wait_for_kafka(common)
            await ensure_topics(common, [*by_topic, *(topics.screened(m) for m in model_ids)])
            await ensure_topics(common, [topics.safety_flagged, topics.dead_letter], partitions=1)
            await ensure_topics(common, [topics.moderations])
            broker = new_broker(common, SERVICE, provider, metrics)
            reviews = ReviewStore(pool, settings.default_retention_days)
            policies = PolicyStore(pool)
            reply_topics = DirectPublisher(common, client_id=f"ferry-{SERVICE}-reply-topics")

            async def reply_topic_ready(topic: str) -> None:
                await reply_topics.wait_for_topic(topic, common.reply_topic_wait_s)

            async def send(message: Message, topic: str, request_id: str) -> None:
                """A decision's message: to a model's screened topic, which the service created, or to a requester's
                reply topic, which may be missing (checked at once when Kafka knows the topic)."""
                await reply_topic_ready(topic)
                await publish_message(broker, message, topic, key=request_id, request_id=request_id)

            guard = None
            if settings.guard_model:
                if settings.guard_model not in model_ids:
                    await ensure_topics(common, [topics.screened(settings.guard_model)])
                guard = GuardCheck(
                    common,
                    settings.guard_model,
                    settings.instance_id,
                    lambda m, t: send(m, t, m.request_id),
                    settings.guard_timeout_s,
                    settings.guard_max_tokens,
                )
            deps = SafetyDeps(
                settings=settings,
                common=common,
                broker=broker,
                model_by_topic=by_topic,
                screener=screener,
                policies=policies,
                reviews=reviews,
                tracer=provider.get_tracer(__name__),
                metrics=safety_metrics,
                send=send,
                reply_topic_ready=reply_topic_ready,
                tokenizers=ModelTokenizers(settings.models_dir),
                guard=guard,
            )
            register(deps)
            app.state.review = ReviewDeps(
                settings, UserStore(pool, settings.session_hours), reviews, send, topics.screened
            )
            app.state.broker = broker
            stage = StageConsumer(
                common.kafka_bootstrap,
                list(by_topic),
                settings.group_id,
                settings.max_batch_size,
                lambda records: screen_prompts(deps, records),
            )
            moderation = StageConsumer(
                common.kafka_bootstrap,
                [topics.moderations],
                settings.moderation_group_id,
                settings.max_batch_size,
                lambda records: moderate(deps, records),
                stage="moderation",
            )
            app.state.stage, app.state.moderation, app.state.guard = stage, moderation, guard
            sweeper = Sweeper(reviews, policies, send, topics.screened, safety_metrics)
            await broker.start()
            screened_topics = {topics.screened(m) for m in model_ids}
            await warm_up_producer(broker_producer(broker), screened_topics.__contains__)
            await reply_topics.start()
            if guard is not None:
                await guard.start()
            await stage.start()
            await moderation.start()
            sweeping = asyncio.create_task(sweeper.run(settings.sweep_interval_s), name="review-sweeps")
            logger.info("screening prompts of %s (guard model: %s)", model_ids, settings.guard_model or "off")
            try:
                yield
            finally:
                sweeping.cancel()
                await asyncio.gather(sweeping, return_exceptions=True)
                await moderation.stop()
                await stage.stop()
                if guard is not None:
                    await guard.stop()
                await reply_topics.stop()
                await broker.stop()
        finally:
            await pool.close()
            provider.shutdown()

    app = FastAPI(title="ferry safety", lifespan=lifespan)
    app.include_router(router)
    install_error_pages(app)

    @app.get("/health", include_in_schema=False)
    async def health() -> Response:
        guard = app.state.guard
        running = app.state.stage.running and app.state.moderation.running and (guard is None or guard.running)
        ok = running and await app.state.broker.ping(timeout=5.0)
        return Response(status_code=204 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/review/")

    app.state.metrics = metrics
    return app


async def main() -> None:
    common, settings = CommonSettings(), SafetySettings()
    configure_logging(SERVICE, common.log_level)
    await serve(build_app(settings, common), settings.host, settings.port)


if __name__ == "__main__":
    run(main())
