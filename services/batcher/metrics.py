"""The batcher's Prometheus series (served on /metrics next to FastStream's faststream_* series)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.batcher.scheduling import PRIORITIES, Batch, QueueDepth

WAIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class BatcherMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter(
            "ferry_batcher_received",
            "Request records read, by what became of them on arrival.",
            ["model", "outcome"],
            registry=registry,
        )

        def gauge(name: str, documentation: str, *labels: str) -> Gauge:
            return Gauge(f"ferry_batcher_{name}", documentation, labels, registry=registry)

        self.queue_depth = gauge("queue_depth", "Requests held, per model and priority.", "model", "priority")
        self.queue_tokens = gauge("queue_tokens", "Tokens (prompt estimate plus max new) held, per model.", "model")
        self.expected_wait = gauge(
            "expected_wait_seconds", "Expected wait of a request arriving now, per model.", "model"
        )
        self.wait = Histogram(
            "ferry_batcher_wait_seconds",
            "Time a request was held in the batcher.",
            ["model", "profile"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "ferry_batcher_batch_size",
            "Requests per batch.",
            ["model", "profile"],
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.batches = Counter(
            "ferry_batcher_batches", "Batches dispatched, by why they closed.", ["model", "reason"], registry=registry
        )
        self.expired = Counter(
            "ferry_batcher_expired", "Requests refused because their deadline passed.", ["model"], registry=registry
        )
        self.cancelled = Counter(
            "ferry_batcher_cancelled", "Requests dropped because they were cancelled.", ["model"], registry=registry
        )
        self.dead_lettered = Counter(
            "ferry_batcher_dead_lettered", "Records sent to the dead-letter topic.", registry=registry
        )

    def observe_batch(self, batch: Batch, now: float) -> None:
        self.batches.labels(batch.model, batch.reason).inc()
        self.batch_size.labels(batch.model, batch.profile).observe(len(batch.items))
        wait = self.wait.labels(batch.model, batch.profile)
        for held in batch.items:
            wait.observe(now - held.arrived)

    def observe_depth(self, model: str, depth: QueueDepth) -> None:
        for priority in PRIORITIES:
            self.queue_depth.labels(model, priority).set(depth.waiting_by_priority.get(priority, 0))
        self.queue_tokens.labels(model).set(depth.waiting_tokens)
        self.expected_wait.labels(model).set(depth.expected_wait_s)
