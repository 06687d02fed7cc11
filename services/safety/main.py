"""Entrypoint: ``python -m services.safety.main``. One process runs the prompt screening stage, persists flagged items
and serves the review UI under /review, with /health and /metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from services.safety.config import SafetySettings
from services.safety.handlers import SERVICE, SafetyDeps, register
from services.safety.screening import AsyncClassifier, Classifier, Screener
from services.safety.store import PolicyStore, ReviewStore, UserStore
from services.safety.web import ReviewDeps, install_error_pages, router
from shared.contracts import Message
from shared.db import connect_pool
from shared.kafka import ensure_topics, new_broker, publish_message, wait_for_kafka
from shared.logging import configure_logging
from shared.registry import ModelRegistry
from shared.runtime import serve
from shared.settings import CommonSettings
from shared.telemetry import setup_tracing

logger = logging.getLogger(__name__)


def build_screener(settings: SafetySettings, http: httpx.AsyncClient | None) -> Screener:
    """The classifiers the settings ask for (loading the embedding model takes about ten seconds)."""
    from services.safety.classifiers import (
        EmbeddingClassifier,
        GuardModelClassifier,
        InjectionClassifier,
        load_embedder,
    )

    classifiers: list[Classifier] = []
    if settings.injection:
        classifiers.append(InjectionClassifier())
    if settings.embedding:
        classifiers.append(EmbeddingClassifier.trained(load_embedder(settings.torch_threads)))
    async_classifiers: list[AsyncClassifier] = []
    if settings.guard_model and http is not None:
        async_classifiers.append(
            GuardModelClassifier(http, settings.guard_base_url, settings.guard_model, settings.guard_timeout_s)
        )
    return Screener(classifiers, async_classifiers, tuple(settings.deny_terms))


def build_app(settings: SafetySettings, common: CommonSettings) -> FastAPI:
    metrics = CollectorRegistry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        provider = setup_tracing(SERVICE, common)
        pool = await connect_pool(common.postgres_dsn)
        http = httpx.AsyncClient()
        try:
            model_ids = settings.models or [m.id for m in await ModelRegistry(pool).enabled()]
            topics = common.topics
            by_topic = {topics.requests(m): m for m in model_ids}
            screener = await asyncio.to_thread(build_screener, settings, http)
            await wait_for_kafka(common)
            await ensure_topics(common, [*by_topic, *(topics.screened(m) for m in model_ids)])
            await ensure_topics(common, [topics.safety_flagged, topics.dead_letter], partitions=1)
            broker = new_broker(common, SERVICE, provider, metrics)
            reviews = ReviewStore(pool)
            register(
                SafetyDeps(
                    settings=settings,
                    common=common,
                    broker=broker,
                    model_by_topic=by_topic,
                    screener=screener,
                    policies=PolicyStore(pool),
                    reviews=reviews,
                    tracer=provider.get_tracer(__name__),
                )
            )

            async def send(message: Message, topic: str, request_id: str) -> None:
                await publish_message(broker, message, topic, key=request_id, request_id=request_id)

            app.state.review = ReviewDeps(
                settings, UserStore(pool, settings.session_hours), reviews, send, topics.screened
            )
            app.state.broker = broker
            await broker.start()
            logger.info("screening prompts of %s", model_ids)
            try:
                yield
            finally:
                await broker.stop()
        finally:
            await http.aclose()
            await pool.close()
            provider.shutdown()

    app = FastAPI(title="ferry safety", lifespan=lifespan)
    app.include_router(router)
    install_error_pages(app)

    @app.get("/health", include_in_schema=False)
    async def health() -> Response:
        ok = await app.state.broker.ping(timeout=5.0)
        return Response(status_code=204 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/review/")

    return app


async def main() -> None:
    common, settings = CommonSettings(), SafetySettings()
    configure_logging(SERVICE, common.log_level)
    await serve(build_app(settings, common), settings.host, settings.port)


if __name__ == "__main__":
    asyncio.run(main())
