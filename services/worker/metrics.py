"""The worker's own Prometheus series, next to FastStream's faststream_* ones in the same registry. Every series is
labelled by model: a worker may host several."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.worker.engine import EngineStats
from shared.contracts import CompletionFinished, TokensGenerated


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["model"]
        self._tokens = Counter(
            "ferry_worker_generated_tokens", "Tokens generated (rate() gives tokens/s).", labels, registry=registry
        )
        self._completions = Counter(
            "ferry_worker_completions", "Requests that finished generating.", labels, registry=registry
        )
        self._stop_to_abort = Histogram(
            "ferry_worker_stop_to_abort_seconds",
            "From a cancel, deadline or shutdown reaching the worker to the engine's stream ending.",
            labels,
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self._cancel_to_abort = Histogram(
            "ferry_worker_cancel_to_abort_seconds",
            "From a cancel being decided (RequestCancelled.cancelled_at, the sender's clock: the ingress when a client "
            "leaves or a deadline passes) to the engine's stream ending. Kafka's delivery of the cancel included.",
            labels,
            registry=registry,
            buckets=(0.0025, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        transit_buckets = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)
        self._cancel_produced = Histogram(
            "ferry_worker_cancel_produced_seconds",
            "From a cancel being decided (RequestCancelled.cancelled_at) to its record being produced (the record's "
            "Kafka CreateTime, in whole milliseconds): the sender's own delay. Both on the sender's clock.",
            labels,
            registry=registry,
            buckets=transit_buckets,
        )
        self._cancel_delivered = Histogram(
            "ferry_worker_cancel_delivered_seconds",
            "From a cancel's record being produced (its Kafka CreateTime, in whole milliseconds, sender's clock) to "
            "the worker reading it: the producer's batching, the broker, the worker's fetch and its event loop.",
            labels,
            registry=registry,
            buckets=transit_buckets,
        )
        self._model_requests = Counter(
            "ferry_worker_model_requests",
            "Requests by whether their model was loaded when they arrived (found_loaded) or had to wait for it.",
            ["model", "outcome"],
            registry=registry,
        )
        self._loads = Counter(
            "ferry_worker_model_loads", "Models loaded (at start, on demand or preloaded).", labels, registry=registry
        )
        self._evictions = Counter(
            "ferry_worker_model_evictions",
            "Models unloaded, by reason (lru, requested).",
            ["model", "reason"],
            registry=registry,
        )

        def gauge(name: str, documentation: str) -> Gauge:
            return Gauge(name, documentation, labels, registry=registry)

        self._running = gauge("ferry_worker_running", "Requests generating in the engine.")
        self._waiting = gauge("ferry_worker_waiting", "Requests queued in the engine.")
        self._kv = gauge("ferry_worker_kv_cache_usage", "Fraction of the KV cache in use.")
        self._load = gauge("ferry_worker_model_load_seconds", "How long the model took to load.")
        self._memory = gauge(
            "ferry_worker_model_memory_bytes",
            "Memory the budget counts for a loaded model: the larger of its estimate (weights plus KV cache) and the"
            " measured figure.",
        )
        self._measured = gauge(
            "ferry_worker_model_measured_memory_bytes",
            "What the model's engine took when it started: the unique memory of the engine process vLLM started plus"
            " the worker's own growth meanwhile (0: not measured).",
        )
        self._watched = (self._running, self._waiting, self._kv, self._load, self._memory, self._measured)

    def watch(self, model: str, stats: EngineStats, memory_bytes: int = 0) -> None:
        """The gauges read a loaded engine's latest figures when scraped."""
        self._running.labels(model).set_function(lambda: stats.running)
        self._waiting.labels(model).set_function(lambda: stats.waiting)
        self._kv.labels(model).set_function(lambda: stats.kv_cache_usage)
        self._load.labels(model).set_function(lambda: stats.load_seconds)
        self._memory.labels(model).set(memory_bytes)
        self._measured.labels(model).set_function(lambda: stats.load_memory_bytes)
        self._loads.labels(model).inc()

    def unwatch(self, model: str, reason: str) -> None:
        """The model was unloaded: its gauges go away."""
        for gauge in self._watched:
            try:
                gauge.remove(model)
            except KeyError:
                pass
        self._evictions.labels(model, reason).inc()

    def arrived(self, model: str, found_loaded: bool) -> None:
        self._model_requests.labels(model, "found_loaded" if found_loaded else "waited_for_load").inc()

    def stop_to_abort(self, model: str, seconds: float) -> None:
        self._stop_to_abort.labels(model).observe(seconds)

    def cancel_to_abort(self, model: str, seconds: float) -> None:
        self._cancel_to_abort.labels(model).observe(seconds)

    def cancel_transit(self, model: str, produced_s: float, delivered_s: float) -> None:
        """The cancel's way to the worker, in two parts (see the histograms' help)."""
        self._cancel_produced.labels(model).observe(produced_s)
        self._cancel_delivered.labels(model).observe(delivered_s)

    def replies(self, model: str, streamed: bool, event: TokensGenerated | CompletionFinished) -> None:
        """Counts tokens as deltas go out (streaming) or when the completion finishes (not streaming)."""
        if isinstance(event, TokensGenerated):
            self._tokens.labels(model).inc(event.token_count)
            return
        self._completions.labels(model).inc()
        if not streamed:
            self._tokens.labels(model).inc(event.usage.completion_tokens)
