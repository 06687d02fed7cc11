"""The response cache against the real Redis: lookups, stores and every kind of invalidation, under a key prefix of
its own so nothing else on the same Redis is touched."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from services.cache.config import CacheSettings
from services.cache.metrics import CacheMetrics
from services.cache.service import ResponseCache
from services.cache.store import RedisResponseStore
from shared.contracts import ChatMessage, CompletionFinished, CompletionRequested, ReplyEvent, SamplingParams, Usage
from shared.settings import CommonSettings

USAGE = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)


@pytest.fixture
async def cache() -> AsyncIterator[tuple[ResponseCache, RedisResponseStore, CollectorRegistry]]:
    redis = Redis.from_url(CommonSettings().redis_url)
    prefix = f"test-{uuid.uuid4().hex[:8]}.cache:"
    store = RedisResponseStore(redis, prefix)
    registry = CollectorRegistry()
    try:
        yield ResponseCache(store, CacheSettings(), CacheMetrics(registry)), store, registry
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


def request(tenant: str | None = "a", model: str = "m", retain: bool = True, text: str = "hi") -> CompletionRequested:
    return CompletionRequested(
        request_id=uuid.uuid4().hex,
        model=model,
        messages=[ChatMessage(role="user", content=text)],
        sampling=SamplingParams(temperature=0, max_tokens=8),
        reply_topic="r",
        tenant_id=tenant,
        retain_text=retain,
    )


async def answer(r: CompletionRequested, text: str = "Paris") -> AsyncIterator[ReplyEvent]:
    yield CompletionFinished(
        request_id=r.request_id, sequence=0, model=r.model, text=text, finish_reason="stop", usage=USAGE
    )


async def fill(cache: ResponseCache, r: CompletionRequested, version: str = "1", text: str = "Paris") -> str:
    lookup = await cache.lookup(r, version, {})
    assert lookup.status == "miss"
    return "".join([e.text async for e in cache.record(lookup, answer(r, text)) if isinstance(e, CompletionFinished)])


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_second_lookup_hits_with_the_stored_answer_and_metrics_count_it(cache) -> None:  # type: ignore[no-untyped-def]
    c, store, registry = cache
    await fill(c, request())
    hit = await c.lookup(request(), "1", {})
    assert hit.status == "hit" and hit.entry is not None and hit.entry.text == "Paris" and hit.entry.usage == USAGE
    assert sample(registry, "ferry_cache_lookups_total", model="m", result="hit") == 1
    assert sample(registry, "ferry_cache_lookups_total", model="m", result="miss") == 1
    assert sample(registry, "ferry_cache_stored_bytes_total", model="m") > 0
    stats = await store.stats()
    assert stats.entries == 1 and stats.bytes > 0 and stats.counters["hits"] == 1 and stats.counters["misses"] == 1


async def test_size_and_hit_ratio_gauges_follow_redis(cache) -> None:  # type: ignore[no-untyped-def]
    c, store, registry = cache
    await fill(c, request(model="m1"))
    await fill(c, request(model="m1", text="other"))
    await c.lookup(request(model="m1"), "1", {})  # a hit: 1 hit, 2 misses so far
    registry = CollectorRegistry()
    figures = ResponseCache(store, CacheSettings(stats_interval_s=0.2), CacheMetrics(registry))
    await figures.update_figures()
    assert sample(registry, "ferry_cache_entries", model="m1") == 2
    assert sample(registry, "ferry_cache_bytes", model="m1") > 0
    assert sample(registry, "ferry_cache_hit_ratio") == pytest.approx(1 / 3)
    await store.invalidate(model="m1")
    await asyncio.sleep(0.2)  # the next interval
    await figures.update_figures()
    assert sample(registry, "ferry_cache_entries", model="m1") == 0
    assert sample(registry, "ferry_cache_bytes", model="m1") == 0


async def test_one_instance_an_interval_scans_the_cache_for_every_instances_figures(cache) -> None:  # type: ignore[no-untyped-def]
    """A scan reads every entry: with one per instance, Redis's work would grow with the ingress instances."""
    c, store, _ = cache
    settings = CacheSettings(stats_interval_s=60)
    first_registry, second_registry = CollectorRegistry(), CollectorRegistry()
    first = ResponseCache(store, settings, CacheMetrics(first_registry))
    second = ResponseCache(store, settings, CacheMetrics(second_registry))
    await fill(c, request(model="m1"))
    await first.update_figures()  # its turn: it scans
    await fill(c, request(model="m1", text="other"))  # the next interval's scan counts this one
    await second.update_figures()  # the same interval: what the first found
    for registry in (first_registry, second_registry):
        assert sample(registry, "ferry_cache_entries", model="m1") == 1
    assert (
        sample(second_registry, "ferry_cache_bytes", model="m1")
        == sample(first_registry, "ferry_cache_bytes", model="m1")
        > 0
    )
    assert (await store.stats()).entries == 2  # the ops command's own scan, now


async def test_tenants_are_isolated_and_nothing_is_stored_without_retention(cache) -> None:  # type: ignore[no-untyped-def]
    c, store, _ = cache
    await fill(c, request(tenant="a"))
    assert (await c.lookup(request(tenant="b"), "1", {})).status == "miss"
    no_retention = await c.lookup(request(tenant="c", retain=False), "1", {})
    assert no_retention.status == "bypass"
    async for _ in c.record(no_retention, answer(no_retention.request)):
        pass
    assert (await store.stats()).entries == 1


async def test_invalidation_by_tenant_model_and_all(cache) -> None:  # type: ignore[no-untyped-def]
    c, store, _ = cache
    for tenant in ("a", "b"):
        for model in ("m1", "m2"):
            await fill(c, request(tenant=tenant, model=model))

    async def hits() -> set[tuple[str, str]]:
        found = set()
        for tenant in ("a", "b"):
            for model in ("m1", "m2"):
                if (await c.lookup(request(tenant=tenant, model=model), "1", {})).status == "hit":
                    found.add((tenant, model))
        return found

    assert len(await hits()) == 4
    assert await store.invalidate(scope="t.a") == 2
    assert await hits() == {("b", "m1"), ("b", "m2")}
    assert await store.invalidate(model="m1") == 1
    assert await hits() == {("b", "m2")}
    await fill(c, request(tenant="a", model="m2"))
    assert await store.invalidate() == 2
    assert await hits() == set()


async def test_an_answer_stored_after_an_invalidation_is_never_served(cache) -> None:  # type: ignore[no-untyped-def]
    c, store, _ = cache
    r = request()
    lookup = await c.lookup(r, "1", {})  # the request is generating while the tenant's entries are invalidated
    await store.invalidate(scope="t.a")
    async for _ in c.record(lookup, answer(r)):
        pass
    assert (await c.lookup(request(), "1", {})).status == "miss"


async def test_a_new_model_version_misses_and_drops_the_old_entries(cache) -> None:  # type: ignore[no-untyped-def]
    c, store, registry = cache
    await fill(c, request(), version="1")
    assert (await c.lookup(request(), "1", {})).status == "hit"
    assert (await c.lookup(request(), "2", {})).status == "miss"
    assert (await store.stats()).entries == 0
    assert sample(registry, "ferry_cache_invalidations_total", cause="model_version") == 1


async def test_an_instance_that_sees_a_new_version_late_keeps_what_others_stored_under_it(cache) -> None:  # type: ignore[no-untyped-def]
    """Two ingress instances reread the registry at different moments. The late one must drop the old version's
    entries only, not the answers the early one already stored under the new version."""
    early, store, _ = cache
    late = ResponseCache(store, CacheSettings(), CacheMetrics(CollectorRegistry()))
    await fill(early, request(text="old"), version="1")
    assert (await late.lookup(request(text="old"), "1", {})).status == "hit"
    await fill(early, request(), version="2")  # the early instance saw version 2 first
    assert (await late.lookup(request(), "2", {})).status == "hit"  # the late one sees 2 now: still a hit
    assert (await early.lookup(request(), "2", {})).status == "hit"
    assert (await store.stats()).entries == 1  # version 1's entry is gone


async def test_redis_down_answers_live(cache) -> None:  # type: ignore[no-untyped-def]
    _, _, registry = cache
    broken = RedisResponseStore(Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2), "x:")
    c = ResponseCache(broken, CacheSettings(), CacheMetrics(CollectorRegistry()))
    lookup = await c.lookup(request(), "1", {})
    assert lookup.status == "bypass"
    events = [e async for e in c.record(lookup, answer(lookup.request))]
    assert len(events) == 1
