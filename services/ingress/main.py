"""Entrypoint: ``python -m services.ingress.main``. The app is built in one function; its resources are created and
closed by the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Protocol

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.asyncio import Redis

from services.cache.config import CacheSettings
from services.cache.service import ResponseCache
from services.ingress.adapters import (
    BatchStore,
    ConversationStore,
    EventLog,
    FileStore,
    Liveness,
    ModelCatalog,
    QueueMonitor,
    ReplyListener,
    RequestPublisher,
    ResponseStore,
    SweepPasses,
    TenantDirectory,
)
from services.ingress.admin_api import router as admin_router
from services.ingress.background import BackgroundResponses
from services.ingress.batches import BatchRunner
from services.ingress.config import IngressSettings
from services.ingress.handlers import BodyLimit, IngressDeps, InProcessApi, install_error_handlers, router
from services.ingress.metrics import IngressMetrics
from services.ingress.rate_limits import RateLimiter
from shared.db import connect_pool
from shared.kafka import new_broker, wait_for_kafka
from shared.logging import configure_logging
from shared.outages import DependencyUnavailable
from shared.registry import ModelRegistry
from shared.runtime import GarbageCollection, run, serve
from shared.settings import CommonSettings
from shared.telemetry import setup_tracing

SERVICE = "ingress"


class Sweeps(Protocol):
    async def sweep(self) -> int: ...


logger = logging.getLogger(__name__)


def build_app(settings: IngressSettings, common: CommonSettings) -> FastAPI:
    metrics = CollectorRegistry()
    metrics.register(GarbageCollection())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        provider = setup_tracing(SERVICE, common)
        pool = await connect_pool(common.postgres_dsn)
        await wait_for_kafka(common)
        broker = new_broker(common, SERVICE, provider, metrics)
        await broker.start()
        tracer = provider.get_tracer(__name__)
        listener = ReplyListener(common, common.topics.replies(f"ingress-{settings.instance_id}"), broker, tracer)
        await listener.start()
        queues = QueueMonitor(common)
        await queues.start()
        timeout = settings.redis_timeout_s
        redis = Redis.from_url(common.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
        await redis.ping()
        cache = ResponseCache.open(common, CacheSettings(), metrics)
        ingress_metrics = IngressMetrics(metrics)
        responses = ResponseStore(pool, settings.postgres_timeout_s)
        conversations = ConversationStore(pool, settings.postgres_timeout_s)
        beats_for_s = 3 * settings.background_beat_s
        liveness = Liveness(redis, common.topic_prefix, settings.instance_id, beats_for_s, settings.redis_timeout_s)
        events = EventLog(redis, common.topic_prefix, settings.redis_timeout_s)
        grace_s = settings.auth_outage_grace_s
        tenants = TenantDirectory(pool, settings.auth_cache_s, settings.postgres_timeout_s, grace_s)
        files = FileStore(pool, settings.postgres_timeout_s, settings.file_timeout_s)
        batches = BatchStore(pool, settings.postgres_timeout_s)
        in_process = InProcessApi(app)
        refund_after = timedelta(seconds=settings.unsettled_refund_after_s)
        limiter = RateLimiter(redis, common.topic_prefix, settings.redis_timeout_s, refund_after)
        deps = app.state.deps = IngressDeps(
            settings=settings,
            catalog=ModelCatalog(ModelRegistry(pool), settings.model_cache_s, settings.postgres_timeout_s),
            publisher=RequestPublisher(common, broker),
            listener=listener,
            tracer=tracer,
            tenants=tenants,
            limiter=limiter,
            queues=queues,
            metrics=ingress_metrics,
            cache=cache,
            responses=responses,
            conversations=conversations,
            finishing=BackgroundResponses(
                settings.instance_id, common, responses, conversations, liveness, ingress_metrics, events, limiter
            ),
            files=files,
            batches=batches,
            running_batches=BatchRunner(
                settings.instance_id,
                batches,
                files,
                liveness,
                in_process.post,
                tenants.tenant,
                ingress_metrics,
                settings.batch_concurrency,
                settings.request_timeout_s,
            ),
        )
        await deps.publisher.warm_up()
        finisher = asyncio.create_task(
            keep_finishing(deps.finishing, deps.running_batches, liveness, settings.background_beat_s)
        )
        kept = (deps.responses, deps.conversations, deps.files, deps.batches)
        passes = SweepPasses(pool, settings.postgres_timeout_s)
        sweeper = asyncio.create_task(sweep_kept_text(kept, passes, settings.stored_response_sweep_s))
        try:
            yield
        finally:
            sweeper.cancel()
            finisher.cancel()
            await asyncio.gather(finisher, return_exceptions=True)
            # the background responses this instance finishes are handed over, their work going on; its batches
            # too, their requests in flight stopped (another instance runs them again)
            await deps.running_batches.stop()
            await deps.finishing.stop()
            await in_process.close()
            # cancels and settlements of requests that just ended still go out
            await asyncio.gather(*deps.background, return_exceptions=True)
            await queues.stop()
            await listener.stop()
            await cache.close()
            await broker.stop()
            await redis.aclose()
            await pool.close()
            provider.shutdown()

    app = FastAPI(title="ferry", summary="OpenAI-compatible LLM serving over Kafka", version="0.1.0", lifespan=lifespan)
    app.include_router(router)
    app.include_router(admin_router)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, by_path={"/v1/files": settings.max_file_bytes})
    return app


async def sweep_kept_text(stores: tuple[Sweeps, ...], passes: SweepPasses, every_s: float) -> None:
    """Deletes the stored responses, conversation items, files and batches no retention covers any more, now and
    every ``every_s``: in the passes this instance claims, the others' going to other instances."""
    while True:
        try:
            claimed = await passes.claim("kept-text", every_s)
        except DependencyUnavailable:
            claimed = False  # the store logged it; the next pass tries again
        for store in stores if claimed else ():
            what = type(store).__name__
            try:
                if swept := await store.sweep():
                    logger.info("%s: %d rows past their tenant's retention deleted", what, swept)
            except DependencyUnavailable:
                pass  # the store logged it; the next pass tries again
            except Exception:  # the next pass tries again: a task that died here would never sweep again
                logger.exception("%s sweep failed", what)
        await asyncio.sleep(every_s)


async def keep_finishing(
    finishing: BackgroundResponses, batches: BatchRunner, liveness: Liveness, every_s: float
) -> None:
    """Beats, and takes over the background responses and batches of instances that stopped beating, every
    ``every_s``."""
    while True:
        try:
            await liveness.beat()
            await finishing.take_over()
            await batches.take_over()
        except DependencyUnavailable:
            pass  # the store logged it; the next pass tries again
        except Exception:  # the next pass tries again: a task that died here would never take over again
            logger.exception("background responses and batches: beat or takeover failed")
        await asyncio.sleep(every_s)


async def main() -> None:
    common, settings = CommonSettings(), IngressSettings()
    configure_logging(SERVICE, common.log_level)
    await serve(build_app(settings, common), settings.host, settings.port)


if __name__ == "__main__":
    run(main())
