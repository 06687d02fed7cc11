"""The worker's own Prometheus series, next to FastStream's faststream_* ones in the same registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.worker.engine import EngineStats
from shared.contracts import CompletionFinished, TokensGenerated


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry, model: str) -> None:
        labels = {"model": model}
        self.tokens = Counter(
            "ferry_worker_generated_tokens",
            "Tokens generated (rate() gives tokens/s).",
            list(labels),
            registry=registry,
        ).labels(**labels)
        self.completions = Counter(
            "ferry_worker_completions", "Requests that finished generating.", list(labels), registry=registry
        ).labels(**labels)
        self.stop_to_abort = Histogram(
            "ferry_worker_stop_to_abort_seconds",
            "From a cancel, deadline or shutdown reaching the worker to the engine's stream ending.",
            list(labels),
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        ).labels(**labels)

        def gauge(name: str, documentation: str) -> Gauge:
            return Gauge(name, documentation, list(labels), registry=registry)

        self._running = gauge("ferry_worker_running", "Requests generating in the engine.")
        self._waiting = gauge("ferry_worker_waiting", "Requests queued in the engine.")
        self._kv = gauge("ferry_worker_kv_cache_usage", "Fraction of the KV cache in use.")
        self._load = gauge("ferry_worker_model_load_seconds", "How long the model took to load.")
        self._labels = labels

    def watch(self, stats: EngineStats) -> None:
        """The gauges read the engine's latest figures when scraped."""
        self._running.labels(**self._labels).set_function(lambda: stats.running)
        self._waiting.labels(**self._labels).set_function(lambda: stats.waiting)
        self._kv.labels(**self._labels).set_function(lambda: stats.kv_cache_usage)
        self._load.labels(**self._labels).set_function(lambda: stats.load_seconds)

    def replies(self, streamed: bool, event: TokensGenerated | CompletionFinished) -> None:
        """Counts tokens as deltas go out (streaming) or when the completion finishes (not streaming)."""
        if isinstance(event, TokensGenerated):
            self.tokens.inc(event.token_count)
            return
        self.completions.inc()
        if not streamed:
            self.tokens.inc(event.usage.completion_tokens)
