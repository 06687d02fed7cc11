"""Calls to the platform's stores (PostgreSQL, Redis) bounded in time: one that fails or hangs becomes a
DependencyUnavailable within a set time, instead of holding the work that needed it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)
T = TypeVar("T")

DATABASE_FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,  # the server shutting down or not accepting connections yet
)
"""What asyncpg raises when PostgreSQL is unreachable, as opposed to an error in a query."""

REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


class DependencyUnavailable(Exception):
    """A platform component the work needs (the database, Redis) failed or did not answer in time."""

    def __init__(self, dependency: str) -> None:
        super().__init__(f"{dependency} unavailable")
        self.dependency = dependency


async def bounded(
    dependency: str, timeout_s: float, failures: tuple[type[BaseException], ...], call: Awaitable[T]
) -> T:
    """Awaits ``call`` for at most ``timeout_s``; its timeout or one of ``failures`` becomes DependencyUnavailable.
    A call that times out is cancelled in the background: a client's clean-up after a cancel (asyncpg asks the
    server to stop the query, over a new connection) can itself hang on a server that does not answer, and must not
    hold the request."""
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # its error is this timeout's
        raise DependencyUnavailable(dependency) from TimeoutError(f"no answer within {timeout_s:g} s")
    try:
        return task.result()
    except failures as exc:
        raise DependencyUnavailable(dependency) from exc


@dataclass
class Breaker:
    """Bounded calls to one component that, after a failure, skip it for ``pause_s`` (they raise
    DependencyUnavailable at once): a component that is down costs one timeout per pause, not one per request."""

    dependency: str
    timeout_s: float
    pause_s: float
    failures: tuple[type[BaseException], ...]
    retry_at: float = float("-inf")

    async def call(self, make: Callable[[], Awaitable[T]]) -> T:
        if time.monotonic() < self.retry_at:
            raise DependencyUnavailable(self.dependency)
        try:
            return await bounded(self.dependency, self.timeout_s, self.failures, make())
        except DependencyUnavailable as exc:
            self.retry_at = time.monotonic() + self.pause_s
            logger.warning("%s failed (%r); calls skip it for %g s", self.dependency, exc.__cause__, self.pause_s)
            raise
