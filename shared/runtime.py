"""Running a Kafka service: the FastStream app served by uvicorn with /health, and uvicorn's graceful shutdown
(SIGTERM: stop consuming, let handlers finish, close clients); the garbage collector kept off the request path."""

from __future__ import annotations

import gc
import logging
import signal
import time
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import uvicorn
import uvloop
from faststream.asgi import AsgiFastStream, make_ping_asgi
from faststream.kafka import KafkaBroker
from prometheus_client import CollectorRegistry, Histogram, make_asgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.kafka import back_off_failed_metadata_updates

logger = logging.getLogger(__name__)

T = TypeVar("T")


def kafka_service_app(
    broker: KafkaBroker,
    metrics: CollectorRegistry,
    routes: Sequence[tuple[str, Any]] = (),
    health: Any = None,
    **kwargs: Any,
) -> AsgiFastStream:
    """The ASGI app of a Kafka service: ``/health`` answers 204 while the broker is connected (or runs ``health``, an
    ASGI handler of the service's own), ``/metrics`` serves Prometheus text; ``routes`` adds the service's own
    (path, ASGI app) pairs."""
    return AsgiFastStream(
        broker,
        asgi_routes=[
            ("/health", health or make_ping_asgi(broker, timeout=5.0)),
            ("/metrics", make_asgi_app(metrics)),
            *routes,
        ],
        logger=logging.getLogger("shared.runtime.app"),
        **kwargs,
    )


def run(main: Coroutine[Any, Any, T]) -> T:
    """Runs a service's ``main`` (or a benchmark's) to its end on uvloop's event loop, as vLLM's own server runs: the
    services spend much of their time in socket reads and writes (Kafka, Redis, HTTP), which uvloop does in C."""
    back_off_failed_metadata_updates()
    return uvloop.run(main)


async def serve(app: object, host: str, port: int) -> None:
    """Serves until SIGTERM or SIGINT, then returns after uvicorn's graceful shutdown, so the caller's clean-up runs
    (closing pools, stopping vLLM's engine process)."""
    server = _HeapFreezingServer(
        uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=30)
    )
    # uvicorn raises the signal it handled again once it has shut down; with the default handlers that would end the
    # process before the caller's clean-up, leaving a worker's EngineCore child running on its own
    previous = {sig: signal.signal(sig, _already_stopping) for sig in (signal.SIGTERM, signal.SIGINT)}
    logger.info("listening on http://%s:%d", host, port)
    try:
        await server.serve()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _already_stopping(signum: int, _frame: object) -> None:
    logger.info("signal %d after shutdown began; finishing clean-up", signum)


def freeze_heap() -> None:
    """Moves every object alive now into the garbage collector's permanent generation, which its collections skip.

    A service's start-up leaves hundreds of thousands of long-lived objects (vLLM, torch, transformers, the safety
    classifiers: 767,000 after a worker's imports and classifiers alone), and each full collection walked them all,
    with the event loop stopped: 430 ms for those, measured here. Every stream the process serves waits that long.
    Under load the ingress met a full collection of 75-103 ms about every 40 s, and 2.5-15 ms with its start-up
    frozen (benchmarks/reports/gc-freeze-ab). What requests allocate later is collected as before. vLLM freezes its
    engine process's heap the same way. The collector never frees a frozen object (reference counting still does), so
    this is called once start-up has made what lives as long as the process, and again after a worker loads a model;
    it collects first, so that no garbage already there is kept for good. That collection walks only what is not
    frozen yet: the whole start-up heap once, before the service takes requests, then a newly loaded model's."""
    gc.collect()
    gc.freeze()


class _HeapFreezingServer(uvicorn.Server):
    """uvicorn's server, freezing the heap once the app's start-up (its lifespan) has run."""

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started:
            freeze_heap()
            logger.info("start-up heap frozen: %d objects out of the garbage collector's way", gc.get_freeze_count())


GC_PAUSE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _CollectionTimer:
    """Times the garbage collector's collections (a ``gc.callbacks`` entry; one per process, since the collector is)
    into a histogram of no registry's: each service's registry reads it through ``GarbageCollection``."""

    def __init__(self) -> None:
        self._started = 0.0
        self.pauses = Histogram(
            "ferry_gc_pause_seconds",
            "Time the garbage collector stopped this process, per collection, by generation (2: a full collection)",
            ["generation"],
            buckets=GC_PAUSE_BUCKETS,
            registry=None,
        )
        self._by_generation = [self.pauses.labels(str(generation)) for generation in range(3)]

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self._by_generation[info["generation"]].observe(time.perf_counter() - self._started)


class GarbageCollection(Collector):
    """Prometheus metrics of this process's garbage collector: how long its collections stopped the process, by
    generation, and how many objects are frozen out of them (see ``freeze_heap``)."""

    def __init__(self) -> None:
        timer = next((c for c in gc.callbacks if isinstance(c, _CollectionTimer)), None)
        if timer is None:
            timer = _CollectionTimer()
            gc.callbacks.append(timer)
        self._timer = timer

    def collect(self) -> Iterator[Any]:
        yield from self._timer.pauses.collect()
        yield GaugeMetricFamily(
            "ferry_gc_frozen_objects",
            "Objects in the garbage collector's permanent generation, which its collections skip",
            value=gc.get_freeze_count(),
        )
