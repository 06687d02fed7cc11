"""Prometheus series of the response cache, registered on the registry of the process that uses the cache."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.lookups = Counter(
            "ferry_cache_lookups",
            "Response cache lookups by result (hit, miss, error); hit ratio = hit / (hit + miss).",
            ["model", "result"],
            registry=registry,
        )
        self.bypassed = Counter(
            "ferry_cache_bypassed",
            "Requests that did not use the response cache, by reason (no_retention, non_deterministic, no_store, "
            "no_cache, disabled, logprobs, token_ids, tools).",
            ["model", "reason"],
            registry=registry,
        )
        self.stores = Counter(
            "ferry_cache_stores",
            "Completions offered to the response cache, by outcome (stored, too_large, incomplete, error).",
            ["model", "outcome"],
            registry=registry,
        )
        self.stored_bytes = Counter(
            "ferry_cache_stored_bytes", "Bytes of entries written to the response cache.", ["model"], registry=registry
        )
        self.invalidations = Counter(
            "ferry_cache_invalidations",
            "Invalidations this process made, by cause (model_version).",
            ["cause"],
            registry=registry,
        )
        self.hit_ratio = Gauge(
            "ferry_cache_hit_ratio",
            "hits / (hits + misses) of every ingress since the cache's counters began (Redis-wide stats hash).",
            registry=registry,
        )
        self.entries = Gauge(
            "ferry_cache_entries", "Entries the response cache holds, per model.", ["model"], registry=registry
        )
        self.bytes = Gauge(
            "ferry_cache_bytes",
            "Memory the response cache's entries use in Redis (MEMORY USAGE), per model.",
            ["model"],
            registry=registry,
        )
        self.redis_evicted_keys = Gauge(
            "ferry_cache_redis_evicted_keys",
            "Keys Redis evicted under memory pressure since it started (Redis-wide: INFO stats evicted_keys).",
            registry=registry,
        )
        self.redis_used_memory = Gauge(
            "ferry_cache_redis_used_memory_bytes", "Memory Redis uses (INFO memory used_memory).", registry=registry
        )
