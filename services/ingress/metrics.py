"""The ingress's Prometheus series: what clients asked for and got, as the ingress saw it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class IngressMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.responses = Counter(
            "ferry_ingress_responses",
            "HTTP responses by route and status (streams count when they start).",
            ["route", "status"],
            registry=registry,
        )
        self.refused = Counter(
            "ferry_ingress_refused",
            "Requests refused before entering Kafka, by reason (rate_limit_requests, model_overloaded, ...).",
            ["reason"],
            registry=registry,
        )
        self.limits_unchecked = Counter(
            "ferry_ingress_limits_unchecked",
            "Requests let through without a rate-limit check because Redis did not answer "
            "(FERRY_INGRESS_RATE_LIMITS_UNAVAILABLE=allow).",
            registry=registry,
        )
        self.cancelled = Counter(
            "ferry_ingress_cancellations",
            "Cancellations published, by reason (client_disconnected, deadline_exceeded).",
            ["reason"],
            registry=registry,
        )
        self.background_ended = Counter(
            "ferry_ingress_background_responses_ended",
            "Background responses this instance finished, by how they ended (completed, incomplete, failed) and by "
            "whether it had taken them over from a stopped instance (taken_over true).",
            ["status", "taken_over"],
            registry=registry,
        )
        self.batches_ended = Counter(
            "ferry_ingress_batches_ended",
            "Batches this instance ended, by status (completed, failed, expired, cancelled).",
            ["status"],
            registry=registry,
        )
        self.batch_requests = Counter(
            "ferry_ingress_batch_requests",
            "Requests of batches run by this instance, by outcome: answered (200), refused (another status: the error "
            "file), retried (a 429 or 503 waited out), not_run (the batch was cancelled or expired first).",
            ["outcome"],
            registry=registry,
        )
        self.time_to_first_event = Histogram(
            "ferry_ingress_time_to_first_event_seconds",
            "From publishing a request to its first reply event (first tokens, or the result when not streamed).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "ferry_ingress_tokens",
            "Tokens of finished requests, by model and kind (prompt, completion, and cached_prompt: prompt tokens the "
            "engine took from its prefix cache).",
            ["model", "kind"],
            registry=registry,
        )
