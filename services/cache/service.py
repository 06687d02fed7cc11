"""The response cache as the ingress uses it: look a request up before it enters Kafka, answer a hit from the cache,
and store the final event of a miss. Redis trouble never fails a request: it is counted and the request goes live."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from redis.asyncio import Redis

from services.cache.config import CacheSettings
from services.cache.metrics import CacheMetrics
from services.cache.policy import (
    CachedCompletion,
    Decision,
    RequestCacheOptions,
    TenantCachePolicy,
    decide,
    entry_of,
    replay,
    shared_scope,
    storable,
    tenant_scope,
)
from services.cache.store import RedisResponseStore
from shared.contracts import CompletionFinished, CompletionRequested, ReplyEvent, utc_now
from shared.outages import REDIS_FAILURES
from shared.settings import CommonSettings

logger = logging.getLogger(__name__)


CACHE_HEADER = "x-ferry-cache"


@dataclass(frozen=True)
class Lookup:
    """One request's cache outcome: ``entry`` is set on a hit; ``key`` is where a miss's answer goes."""

    request: CompletionRequested
    decision: Decision
    model_version: str
    key: str | None = None
    entry: CachedCompletion | None = None

    @property
    def status(self) -> Literal["hit", "miss", "refresh", "bypass"]:
        if self.entry is not None:
            return "hit"
        if self.key is None:
            return "bypass"
        return "miss" if self.decision.read else "refresh"

    @property
    def headers(self) -> dict[str, str]:
        """``x-ferry-cache``: hit, miss (stored for next time), refresh (no-cache: not read, stored) or bypass."""
        return {CACHE_HEADER: self.status}


def cache_headers(lookups: list[Lookup]) -> dict[str, str]:
    """``x-ferry-cache`` of a request: its status, or with several choices that differ, each choice's in order."""
    statuses = [lookup.status for lookup in lookups]
    return {CACHE_HEADER: statuses[0] if len(set(statuses)) == 1 else ", ".join(statuses)}


class ResponseCache:
    def __init__(self, store: RedisResponseStore, settings: CacheSettings, metrics: CacheMetrics) -> None:
        self._store, self.settings, self._metrics = store, settings, metrics
        self._versions: dict[str, str] = {}
        self._sized_models: set[str] = set()
        self._closers: list[Callable[[], Awaitable[None]]] = []

    @classmethod
    def open(cls, common: CommonSettings, settings: CacheSettings, registry: CollectorRegistry) -> ResponseCache:
        """The cache with its own Redis client and its metrics on ``registry``; ``close()`` it at shutdown."""
        redis = Redis.from_url(common.redis_url, socket_timeout=settings.redis_timeout_s, socket_connect_timeout=1.0)
        cache = cls(RedisResponseStore(redis, settings.prefix(common.topic_prefix)), settings, CacheMetrics(registry))
        figures = asyncio.create_task(cache.refresh_server_figures(), name="cache-figures")

        async def close() -> None:
            figures.cancel()
            await asyncio.gather(figures, return_exceptions=True)
            await redis.aclose()

        cache._closers.append(close)
        return cache

    async def close(self) -> None:
        for close in self._closers:
            await close()

    async def lookup(
        self,
        request: CompletionRequested,
        model_version: str,
        headers: Mapping[str, str],
        policy: TenantCachePolicy | None = None,
        sample: int = 0,
    ) -> Lookup:
        """Decides whether ``request`` may use the cache (see services.cache.policy) and reads its entry if so.
        ``sample`` is the choice's index in a request for several (see ``decide``)."""
        options = RequestCacheOptions.from_headers(headers)
        decision = decide(
            request,
            model_version,
            options,
            policy or TenantCachePolicy(),
            self.settings.ttl_s,
            self.settings.enabled,
            sample,
        )
        model = request.model
        if decision.digest is None or decision.scope is None:
            self._metrics.bypassed.labels(model, decision.bypass or "unknown").inc()
            return Lookup(request, decision, model_version)
        try:
            await self._on_version(model, model_version)
            key = await self._store.entry_key(model, model_version, decision.scope, decision.digest)
            if not decision.read:
                self._metrics.bypassed.labels(model, "no_cache").inc()
                return Lookup(request, decision, model_version, key)
            raw = await self._store.get(key)
            entry = self._parse(raw, request.request_id) if raw is not None else None
            if entry is not None and not entry.fresh_enough(options, utc_now()):
                entry = None
            result = "hit" if entry is not None else "miss"
            self._metrics.lookups.labels(model, result).inc()
            await self._store.count("hits" if entry is not None else "misses")
            return Lookup(request, decision, model_version, key, entry)
        except REDIS_FAILURES as exc:
            logger.warning("request %s: cache lookup failed (%s); answering live", request.request_id, exc)
            self._metrics.lookups.labels(model, "error").inc()
            return Lookup(request, decision, model_version)  # no key: nothing is stored either

    async def invalidate_tenant(self, tenant_id: str, *shared: str | None) -> int:
        """Drops every entry of the tenant's own scope (a tenant's request, or its retention turned off), and of the
        ``shared`` scopes given (those it opted into: its answers may be there, and entries do not record who stored
        them)."""
        deleted = await self._store.invalidate(scope=tenant_scope(tenant_id))
        for name in {s for s in shared if s}:
            deleted += await self._store.invalidate(scope=shared_scope(name))
        self._metrics.invalidations.labels("tenant").inc()
        return deleted

    def replay(self, lookup: Lookup) -> AsyncIterator[ReplyEvent]:
        """The hit's answer as reply events, for the ingress's usual JSON or SSE rendering."""
        assert lookup.entry is not None
        return replay(lookup.entry, lookup.request)

    async def record(self, lookup: Lookup, events: AsyncIterator[ReplyEvent]) -> AsyncIterator[ReplyEvent]:
        """Passes ``events`` through; stores the completion (before handing on the final event, so a reader that stops
        there does not lose it) when the lookup allows."""
        async for event in events:
            if isinstance(event, CompletionFinished) and lookup.key is not None and lookup.decision.write:
                await self._store_final(lookup, event)
            yield event

    async def _store_final(self, lookup: Lookup, finished: CompletionFinished) -> None:
        model, ttl_s = lookup.request.model, lookup.decision.ttl_s
        assert lookup.key is not None and ttl_s is not None
        if not storable(finished):
            self._metrics.stores.labels(model, "incomplete").inc()
            return
        value = entry_of(finished, lookup.model_version).model_dump_json().encode()
        if len(value) > self.settings.max_entry_bytes:
            self._metrics.stores.labels(model, "too_large").inc()
            return
        try:
            await self._store.put(lookup.key, value, ttl_s)
        except REDIS_FAILURES as exc:
            logger.warning("request %s: cache store failed (%s)", lookup.request.request_id, exc)
            self._metrics.stores.labels(model, "error").inc()
            return
        self._metrics.stores.labels(model, "stored").inc()
        self._metrics.stored_bytes.labels(model).inc(len(value))

    async def _on_version(self, model: str, version: str) -> None:
        """A new registry version of a model invalidates its entries. The version is part of every key, so old
        entries can never be read; this also deletes them to free their memory. Only the old version's entries go:
        other ingress instances may already have stored answers of the new one."""
        seen = self._versions.get(model)
        self._versions[model] = version
        if seen is not None and seen != version:
            deleted = await self._store.drop_version(model, seen)
            self._metrics.invalidations.labels("model_version").inc()
            logger.info("model %s changed version %s -> %s: %d cache entries dropped", model, seen, version, deleted)

    def _parse(self, raw: bytes, request_id: str) -> CachedCompletion | None:
        try:
            return CachedCompletion.model_validate_json(raw)
        except ValidationError:
            logger.warning("request %s: unreadable cache entry ignored", request_id)
            return None

    async def refresh_server_figures(self) -> None:
        """Copies the cache's size (entries and bytes per model, from a scan that one instance makes an interval for
        all), its hit ratio across every ingress and Redis-wide figures (evictions, memory) into the metrics every
        ``stats_interval_s``; runs until cancelled."""
        while True:
            try:
                await self.update_figures()
            except REDIS_FAILURES as exc:
                logger.warning("cache: reading Redis figures failed (%s)", exc)
            await asyncio.sleep(self.settings.stats_interval_s)

    async def update_figures(self) -> None:
        sizes = await self._store.shared_sizes(self.settings.stats_interval_s)
        if sizes is not None:  # (None: another instance is scanning for the first time)
            for model in self._sized_models - sizes.keys():  # a model whose entries are all gone shows 0
                self._metrics.entries.labels(model).set(0)
                self._metrics.bytes.labels(model).set(0)
            for model, (entries, size) in sizes.items():
                self._metrics.entries.labels(model).set(entries)
                self._metrics.bytes.labels(model).set(size)
            self._sized_models |= sizes.keys()
        counters = await self._store.counters()
        hits, misses = counters.get("hits", 0), counters.get("misses", 0)
        if hits + misses:
            self._metrics.hit_ratio.set(hits / (hits + misses))
        redis = await self._store.server_figures()
        self._metrics.redis_evicted_keys.set(float(redis.get("evicted_keys") or 0))
        self._metrics.redis_used_memory.set(float(redis.get("used_memory") or 0))
