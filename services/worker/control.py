"""``python -m services.worker.control preload|evict MODEL``: asks workers to load a model ahead of demand (predictive
loading) or to unload it, by producing ModelPreloadRequested / ModelEvictionRequested on ``<prefix>worker-control``.
Every worker that may host the model acts on it (or only ``--worker-id``). The scaler produces the same commands.

``python -m services.worker.control default-variant MODEL VARIANT`` sets the model's default variant in the registry:
requests that name none (and whose tenant has no default) get it from workers that may load it, within
FERRY_WORKER_DEMAND_FLUSH_S."""

from __future__ import annotations

import argparse
import asyncio

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from services.worker.catalog import ModelCatalog
from shared.contracts import ModelEvictionRequested, ModelPreloadRequested
from shared.db import connect_pool
from shared.kafka import ensure_topics, new_broker, publish_message
from shared.settings import CommonSettings


async def send(common: CommonSettings, command: ModelPreloadRequested | ModelEvictionRequested) -> None:
    topic = common.topics.worker_control
    await ensure_topics(common, [topic], partitions=1)
    broker = new_broker(common, "worker-control", TracerProvider(), CollectorRegistry())  # a one-shot: no spans kept
    await broker.connect()
    try:
        await publish_message(broker, command, topic, key=command.model)
    finally:
        await broker.stop()


async def set_default_variant(common: CommonSettings, model_id: str, variant: str) -> bool:
    pool = await connect_pool(common.postgres_dsn)
    try:
        return await ModelCatalog(pool).set_default_variant(model_id, variant)
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.worker.control", description=__doc__.split("\n\n")[0])
    actions = parser.add_subparsers(dest="action", required=True)
    preload = actions.add_parser("preload", help="load a model ahead of demand")
    evict = actions.add_parser("evict", help="unload a model (once its running requests end)")
    for action in (preload, evict):
        action.add_argument("model", help="registry id of the model")
        action.add_argument("--worker-id", help="only this worker acts (default: every worker that may host it)")
        action.add_argument("--reason", default="operator", help="why, for the workers' logs")
    preload.add_argument("--variant", help="variant to load (default: the model's)")
    default = actions.add_parser("default-variant", help="set the variant of requests that name none")
    default.add_argument("model", help="registry id of the model")
    default.add_argument("variant", help="an enabled variant of the model (fp32, fp16, int8, ...)")
    args = parser.parse_args(argv)
    if args.action == "default-variant":
        if not asyncio.run(set_default_variant(CommonSettings(), args.model, args.variant)):
            raise SystemExit(f"error: {args.model} has no enabled variant {args.variant!r} in the registry")
        print(f"default variant of {args.model}: {args.variant}")
        return
    command: ModelPreloadRequested | ModelEvictionRequested
    if args.action == "preload":
        command = ModelPreloadRequested(
            model=args.model, variant=args.variant, worker_id=args.worker_id, reason=args.reason
        )
    else:
        command = ModelEvictionRequested(model=args.model, worker_id=args.worker_id, reason=args.reason)
    asyncio.run(send(CommonSettings(), command))
    print(f"{type(command).__name__} {args.model} -> {CommonSettings().topics.worker_control}")


if __name__ == "__main__":
    main()
