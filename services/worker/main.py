"""Entrypoint: ``python -m services.worker.main`` (serves FERRY_WORKER_MODEL, or the registry's default model, and may
host the models of FERRY_WORKER_MODELS next to it within FERRY_WORKER_MEMORY_BUDGET_BYTES)."""

from __future__ import annotations

import logging

from faststream.asgi import AsgiResponse, get
from faststream.kafka import KafkaBroker
from prometheus_client import CollectorRegistry

from services.safety.wiring import build_output_guard
from services.worker.catalog import ModelCatalog
from services.worker.config import WorkerSettings
from services.worker.engine_processes import cpu_build_of_vllm, start_engine_process_server
from services.worker.handlers import SERVICE, WorkerDeps, drain, register, start_background
from services.worker.hosting import ModelHost, VllmLoader
from services.worker.metrics import WorkerMetrics
from services.worker.model_store import ensure_model
from services.worker.variants import DEFAULT_CPU_VARIANT
from shared.db import connect_pool
from shared.kafka import DirectPublisher, ensure_topics, new_broker, wait_for_kafka
from shared.logging import configure_logging
from shared.registry import ModelRecord, ModelRegistry, enabled_models
from shared.runtime import GarbageCollection, kafka_service_app, run, serve
from shared.settings import CommonSettings
from shared.telemetry import setup_tracing

logger = logging.getLogger(__name__)


async def main() -> None:
    common, settings = CommonSettings(), WorkerSettings()
    configure_logging(SERVICE, common.log_level)
    provider = setup_tracing(SERVICE, common)
    if settings.engine_process_server and cpu_build_of_vllm():
        start_engine_process_server()  # it imports vLLM while this process does (see engine_processes)
    try:
        model = await _served_model(common, settings)
        pool = await connect_pool(common.postgres_dsn)  # registry, tiers, demand counts, output-screening policies
        registry, catalog = ModelRegistry(pool), ModelCatalog(pool)
        metrics = CollectorRegistry()
        metrics.register(GarbageCollection())
        worker_metrics = WorkerMetrics(metrics)
        host = ModelHost(
            allowed=[model.id, *settings.models],
            loader=VllmLoader(
                settings.models_dir,
                settings.kv_cache_gib,
                settings.max_num_seqs,
                ensure_model,
                implicit_variant=None if settings.variant else DEFAULT_CPU_VARIANT,
                cpu_threads=settings.engine_cpu_threads,
                cpu_nice=settings.engine_nice,
                process_server=settings.engine_process_server,
            ),
            registry=registry.get,
            tiers=catalog.tiers,
            metrics=worker_metrics,
            budget_bytes=settings.budget_bytes(),
            default_variant=settings.variant or DEFAULT_CPU_VARIANT,
            variants=settings.variants,
        )
        await host.load(model.id)
        hosted = [r for r in [await registry.get(m) for m in host.allowed] if r is not None]
        await catalog.record_models(hosted, host.default_variant, host.variant_problems)
        host.model_defaults = await catalog.default_variants(host.allowed)
        await wait_for_kafka(common)
        topics = common.topics
        await ensure_topics(common, [topics.batches(m) for m in host.allowed])
        await ensure_topics(common, [topics.cancellations, topics.worker_status, topics.worker_control], partitions=1)
        broker = new_broker(common, SERVICE, provider, metrics)
        replies = DirectPublisher(common, client_id=f"ferry-{SERVICE}-replies")
        await replies.start()
        await replies.warm_up(lambda t: t.startswith(topics.replies("")))  # the ingress instances' reply topics
        deps = WorkerDeps(
            settings=settings,
            common=common,
            broker=broker,
            replies=replies,
            host=host,
            model_id=model.id,
            tracer=provider.get_tracer(__name__),
            metrics=worker_metrics,
            output_guard=await build_output_guard(common, broker, pool),
        )
        deps.catalog = catalog
        register(deps)

        async def background() -> None:
            await start_background(deps)

        async def drain_in_flight() -> None:
            await drain(deps, seconds=settings.drain_seconds)

        app = kafka_service_app(
            broker,
            metrics,
            routes=_probes(deps, broker),
            after_startup=[background],
            on_shutdown=[drain_in_flight],
        )
        logger.info("serving %s as %s (may host %s)", model.id, deps.worker_id, ", ".join(host.allowed))
        try:
            await serve(app, settings.host, settings.port)
        finally:
            await replies.stop()  # after the drain: it published the in-flight requests' last replies
            await host.shutdown()
            await pool.close()
    finally:
        provider.shutdown()


def _probes(deps: WorkerDeps, broker: KafkaBroker) -> list[tuple[str, object]]:
    """Liveness: the process answers and its background loops run. Readiness: it takes work (broker connected, not
    draining); a load balancer or the scaler stops counting on a draining worker."""

    @get
    async def live(scope: object) -> AsgiResponse:
        dead = [t.get_name() for t in deps.background if t.done()]
        return AsgiResponse(f"stopped: {dead}".encode(), 500) if dead else AsgiResponse(b"", 204)

    @get
    async def ready(scope: object) -> AsgiResponse:
        if deps.draining:
            return AsgiResponse(b"draining", 503)
        if not await broker.ping(5.0):
            return AsgiResponse(b"kafka unreachable", 503)
        return AsgiResponse(b"", 204)

    return [("/live", live), ("/ready", ready)]


async def _served_model(common: CommonSettings, settings: WorkerSettings) -> ModelRecord:
    models = await enabled_models(common.postgres_dsn)
    wanted = [m for m in models if (m.id == settings.model if settings.model else m.default)]
    if not wanted:
        raise SystemExit(
            f"model {settings.model or '(default)'} is not in the registry; enabled: {[m.id for m in models]}"
        )
    return wanted[0]


if __name__ == "__main__":
    run(main())
