"""Running a Kafka service: the FastStream app served by uvicorn with /health, and uvicorn's graceful shutdown
(SIGTERM: stop consuming, let handlers finish, close clients)."""

from __future__ import annotations

import logging
import signal
from collections.abc import Sequence
from typing import Any

import uvicorn
from faststream.asgi import AsgiFastStream, make_ping_asgi
from faststream.kafka import KafkaBroker
from prometheus_client import CollectorRegistry, make_asgi_app

logger = logging.getLogger(__name__)


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


async def serve(app: object, host: str, port: int) -> None:
    """Serves until SIGTERM or SIGINT, then returns after uvicorn's graceful shutdown, so the caller's clean-up runs
    (closing pools, stopping vLLM's engine process)."""
    server = uvicorn.Server(
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
