"""Operations on the response cache: ``python -m services.cache.ops COMMAND`` (``FERRY_`` and ``FERRY_CACHE_``
settings pick the Redis, Kafka and key prefix of a deployment).

  stats                         entries and bytes per model, cumulative hits/misses/stores, Redis evictions
  invalidate --tenant T         drop tenant T's entries (also --model M, --scope NAME for a shared scope, --all)
  models [--seconds N]          model cache view: requests that found their model loaded, from worker heartbeats
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError
from redis.asyncio import Redis

from services.cache.config import CacheSettings
from services.cache.model_view import model_cache_view
from services.cache.policy import shared_scope, tenant_scope
from services.cache.store import RedisResponseStore
from shared.contracts import WorkerStatusReported
from shared.settings import CommonSettings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m services.cache.ops", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("stats", help="entries, bytes, hit/miss counts, evictions")
    inv = sub.add_parser("invalidate", help="drop entries by tenant, model, shared scope, or all")
    what = inv.add_mutually_exclusive_group()
    what.add_argument("--tenant", help="a tenant id")
    what.add_argument("--scope", help="a shared scope name tenants opted into")
    what.add_argument("--all", action="store_true", help="every entry")
    inv.add_argument("--model", help="a model id (alone, or with --tenant/--scope)")
    models = sub.add_parser("models", help="model cache hit ratio from worker heartbeats")
    models.add_argument("--seconds", type=float, default=60, help="heartbeats of the last N seconds")
    args = p.parse_args(argv)
    if args.command == "invalidate" and not (args.tenant or args.scope or args.all or args.model):
        p.error("invalidate needs --tenant, --scope, --model or --all")
    if args.command == "invalidate" and args.all and args.model:
        p.error("--all already covers every model")
    return args


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.2f} MiB"


async def stats(store: RedisResponseStore) -> str:
    s = await store.stats()
    hits, misses = s.counters.get("hits", 0), s.counters.get("misses", 0)
    ratio = f"{hits / (hits + misses):.1%}" if hits + misses else "n/a"
    lines = [
        f"response cache under {store.prefix!r}: {s.entries} entries, {_mib(s.bytes)}",
        *(f"  {model}: {n} entries, {_mib(b)}" for model, (n, b) in s.by_model.items()),
        f"lookups: {hits} hits, {misses} misses (hit ratio {ratio}); stores: {s.counters.get('stores', 0)} "
        f"({_mib(s.counters.get('stored_bytes', 0))}); invalidations: {s.counters.get('invalidations', 0)}",
        f"redis: evicted_keys={s.redis.get('evicted_keys')} (Redis-wide) used_memory={s.redis.get('used_memory')} "
        f"maxmemory={s.redis.get('maxmemory')} policy={s.redis.get('maxmemory_policy')}",
    ]
    return "\n".join(lines)


def _scope(tenant: str | None, shared: str | None) -> str | None:
    if tenant is not None:
        return tenant_scope(tenant)
    return shared_scope(shared) if shared is not None else None


async def invalidate_tenant(tenant_id: str, *shared: str | None) -> int:
    """Drops a tenant's cached responses, e.g. when its retention is turned off, and the entries of the ``shared``
    scopes given (the tenant's answers may be among them); returns how many."""
    common, settings = CommonSettings(), CacheSettings()
    redis = Redis.from_url(common.redis_url)
    try:
        store = RedisResponseStore(redis, settings.prefix(common.topic_prefix))
        deleted = await store.invalidate(scope=tenant_scope(tenant_id))
        for name in {s for s in shared if s}:
            deleted += await store.invalidate(scope=shared_scope(name))
        return deleted
    finally:
        await redis.aclose()


async def recent_heartbeats(common: CommonSettings, seconds: float) -> list[WorkerStatusReported]:
    """Worker heartbeats of the last ``seconds``, read from the status topic without a consumer group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=common.kafka_bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        topic = common.topics.worker_status
        if topic not in await consumer.topics():  # also lets the consumer's start-up tasks run before any stop
            return []
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.offsets_for_times({tp: int((time.time() - seconds) * 1000) for tp in partitions})
        for tp in partitions:
            found = starts.get(tp)
            consumer.seek(tp, found.offset if found else ends[tp])
        reports: list[WorkerStatusReported] = []
        while any(await consumer.position(tp) < ends[tp] for tp in partitions):
            batches = await consumer.getmany(timeout_ms=1000)
            if not batches:
                break
            for records in batches.values():
                for record in records:
                    try:
                        reports.append(WorkerStatusReported.model_validate_json(record.value or b""))
                    except ValidationError:
                        continue  # not a heartbeat we can read; the dead-letter topic is the workers' business
        return reports
    finally:
        await consumer.stop()


def models_report(reports: list[WorkerStatusReported], seconds: float) -> str:
    view = model_cache_view(reports)
    if not view:
        return f"no worker heartbeats in the last {seconds:g} s"
    lines = [f"model cache (latest heartbeat of {len({r.worker_id for r in reports})} workers, last {seconds:g} s):"]
    for v in view:
        ratio = f"{v.hit_ratio:.1%}" if v.hit_ratio is not None else "n/a"
        lines.append(
            f"  {v.model}: hit ratio {ratio} ({v.found_loaded} found loaded, {v.waited_for_load} waited) "
            f"on {v.workers} workers, {'/'.join(v.states) or 'evicted'}"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> str:
    common, settings = CommonSettings(), CacheSettings()
    if args.command == "models":
        return models_report(await recent_heartbeats(common, args.seconds), args.seconds)
    redis = Redis.from_url(common.redis_url)
    try:
        store = RedisResponseStore(redis, settings.prefix(common.topic_prefix))
        if args.command == "stats":
            return await stats(store)
        scope = _scope(args.tenant, args.scope)
        deleted = await store.invalidate(model=args.model, scope=scope)
        target = " and ".join(
            x for x in (f"model {args.model}" if args.model else "", f"scope {scope}" if scope else "") if x
        )
        return f"invalidated {target or 'everything'}: {deleted} entries deleted"
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    print(asyncio.run(run(parse_args(argv if argv is not None else sys.argv[1:]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
