"""The safety service's Prometheus series (besides FastStream's for the review-queue consumer)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_STAGE_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class SafetyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.prompts = Counter(
            "ferry_safety_prompts",
            "Prompts screened, by action (allow, release, hold, block).",
            ["action"],
            registry=registry,
        )
        self.moderations = Counter(
            "ferry_safety_moderations",
            "Moderation requests answered or dropped, by outcome (flagged: any text flagged, allowed, unavailable: the "
            "tenant's policy could not be read, expired: past its deadline when read).",
            ["outcome"],
            registry=registry,
        )
        self.screen_seconds = Histogram(
            "ferry_safety_screen_seconds",
            "Time to screen one poll's prompts (rules and model classifiers, cache lookups included).",
            buckets=_STAGE_BUCKETS,
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "ferry_safety_stage_seconds",
            "From a request's record timestamp (set by its producer) to its forward, refusal or hold being published.",
            buckets=_STAGE_BUCKETS,
            registry=registry,
        )
        self.cache = Counter(
            "ferry_safety_screening_cache",
            "Lookups of the screening-result cache, by result (hit, miss).",
            ["result"],
            registry=registry,
        )
        self.cache_entries = Gauge(
            "ferry_safety_screening_cache_entries", "Entries held by the screening-result cache.", registry=registry
        )
        self.guard = Counter(
            "ferry_safety_guard_checks",
            "Guard-model checks, by outcome (safe, unsafe, unreadable, failed, timeout) and the fallback applied "
            "(none when the answer was read).",
            ["outcome", "fallback"],
            registry=registry,
        )
        self.expired = Counter(
            "ferry_safety_review_expired",
            "Held items nobody decided by their deadline, by what the tenant's policy applied (withhold, release).",
            ["applied"],
            registry=registry,
        )
        self.purged = Counter(
            "ferry_safety_texts_purged",
            "Retained texts erased from the review queue at the end of their retention.",
            registry=registry,
        )
