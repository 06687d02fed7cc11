"""Entrypoint: ``python -m services.scaler.main``. Decides replicas per model every FERRY_SCALER_INTERVAL_S, serves
/health and /metrics (FERRY_SCALER_PORT) and KEDA's external scaler gRPC interface (FERRY_SCALER_GRPC_PORT); with
FERRY_SCALER_SUPERVISE=true it also starts and stops worker processes on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from prometheus_client import CollectorRegistry

from services.batcher.config import BatcherSettings
from services.scaler.adapters import KafkaLag, ScalerStore
from services.scaler.config import ScalerSettings
from services.scaler.handlers import SERVICE, HandlerDeps, publisher, register
from services.scaler.keda import ExternalScaler, start_server
from services.scaler.scaling import Scaler, ScalerDeps, ScalerMetrics
from services.scaler.signals import StatusBoard
from services.scaler.supervisor import Supervisor, SupervisorConfig
from services.worker.config import WorkerSettings
from shared.contracts import utc_now
from shared.db import connect_pool
from shared.kafka import ensure_topics, new_broker, wait_for_kafka
from shared.logging import configure_logging
from shared.registry import ModelRegistry
from shared.runtime import GarbageCollection, kafka_service_app, run, serve
from shared.settings import CommonSettings
from shared.telemetry import setup_tracing

logger = logging.getLogger(__name__)


async def main() -> None:
    common, settings = CommonSettings(), ScalerSettings()
    configure_logging(SERVICE, common.log_level)
    provider = setup_tracing(SERVICE, common)
    pool = await connect_pool(common.postgres_dsn)
    try:
        registered = await ModelRegistry(pool).enabled()
        models = settings.models or [m.id for m in registered]
        await wait_for_kafka(common)
        topics = common.topics
        await ensure_topics(common, [t for m in models for t in (topics.requests(m), topics.batches(m))])
        await ensure_topics(common, [topics.worker_status, topics.queue_status, topics.worker_control], partitions=1)
        metrics = CollectorRegistry()
        metrics.register(GarbageCollection())
        broker = new_broker(common, SERVICE, provider, metrics)
        board = StatusBoard(timedelta(seconds=settings.status_max_age_s))
        register(HandlerDeps(common=common, broker=broker, board=board))
        lag = KafkaLag(common.kafka_bootstrap, settings.peek_records, {m.id: m.max_model_len for m in registered})
        supervisor = (
            Supervisor(
                SupervisorConfig(
                    logs_dir=settings.worker_logs_dir,
                    models_dir=settings.worker_models_dir,
                    env=settings.worker_env,
                    ready_s=settings.worker_ready_s,
                    drain_s=settings.drain_s,
                )
            )
            if settings.supervise
            else None
        )
        store = ScalerStore(pool)
        scaler = Scaler(
            ScalerDeps(
                settings=settings,
                topics=topics,
                models=models,
                lag=lag,
                board=board,
                publish=publisher(broker),
                metrics=ScalerMetrics(metrics),
                # the group ids the batcher and workers are configured with (their settings, their defaults)
                batcher_group=BatcherSettings().group_id,
                worker_group_prefix=WorkerSettings().group_prefix,
                store=store,
                supervisor=supervisor,
            )
        )
        await scaler.load_history()
        tasks: list[asyncio.Task[None]] = []
        grpc_server = None

        async def run_loop() -> None:
            while True:
                await scaler.tick()
                await asyncio.sleep(settings.interval_s)

        async def prune_records() -> None:
            while True:
                try:
                    before = utc_now() - timedelta(days=settings.records_kept_days)
                    if deleted := await store.prune(before):
                        logger.info("deleted %d demand, forecast and decision rows older than %s", deleted, before)
                except Exception:  # the next hour tries again
                    logger.exception("old demand, forecasts and decisions could not be deleted")
                await asyncio.sleep(3600)

        async def start() -> None:
            nonlocal grpc_server
            await lag.start()
            if settings.grpc_port:
                servicer = ExternalScaler(
                    lambda m: scaler.states[m].last if m in scaler.states else None,
                    lambda m: m in scaler.states,
                    settings.target_backlog_tokens,
                    settings.interval_s,
                )
                grpc_server, _ = await start_server(servicer, settings.grpc_host, settings.grpc_port)
            tasks.append(asyncio.create_task(run_loop(), name="scaler-loop"))
            tasks.append(asyncio.create_task(prune_records(), name="scaler-prune"))
            logger.info("scaling %s (supervise=%s, predictive=%s)", models, settings.supervise, settings.predictive)

        async def stop() -> None:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if grpc_server is not None:
                await grpc_server.stop(grace=2)
            if supervisor is not None:
                await supervisor.shutdown()
            await lag.close()

        app = kafka_service_app(broker, metrics, after_startup=[start], on_shutdown=[stop])
        await serve(app, settings.host, settings.port)
    finally:
        await pool.close()
        provider.shutdown()


if __name__ == "__main__":
    run(main())
