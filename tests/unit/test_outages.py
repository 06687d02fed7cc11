"""Bounded calls to the platform's stores: a hang or a connection failure becomes DependencyUnavailable in time, other
errors stay what they are, and a breaker stops asking a failed store for a pause."""

from __future__ import annotations

import asyncio
import time

import pytest

from shared.outages import Breaker, DependencyUnavailable, bounded

FAILURES = (OSError, TimeoutError)


async def test_a_call_that_answers_in_time_returns_its_value() -> None:
    async def answer() -> int:
        return 42

    assert await bounded("database", 1.0, FAILURES, answer()) == 42


async def test_a_connection_failure_becomes_dependency_unavailable() -> None:
    async def refused() -> None:
        raise ConnectionRefusedError("connection refused")

    with pytest.raises(DependencyUnavailable) as raised:
        await bounded("database", 1.0, FAILURES, refused())
    assert raised.value.dependency == "database"
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)


async def test_an_error_that_is_not_an_outage_is_raised_as_it_is() -> None:
    async def bad_query() -> None:
        raise ValueError("syntax error at or near SELEC")

    with pytest.raises(ValueError, match="SELEC"):
        await bounded("database", 1.0, FAILURES, bad_query())


async def test_a_hang_ends_at_the_timeout_even_when_the_call_s_clean_up_hangs_too() -> None:
    cleaned_up = asyncio.Event()

    async def hung_with_slow_clean_up() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)  # like asyncpg asking a server that does not answer to cancel the query
            cleaned_up.set()
            raise

    started = time.monotonic()
    with pytest.raises(DependencyUnavailable) as raised:
        await bounded("database", 0.05, FAILURES, hung_with_slow_clean_up())
    assert time.monotonic() - started < 0.4
    assert isinstance(raised.value.__cause__, TimeoutError)
    assert not cleaned_up.is_set()
    await asyncio.wait_for(cleaned_up.wait(), 5)  # the clean-up went on in the background


async def test_after_a_failure_the_breaker_skips_the_store_for_its_pause() -> None:
    calls = 0
    healthy = False

    async def ask() -> str:
        nonlocal calls
        calls += 1
        if not healthy:
            raise ConnectionResetError("reset")
        return "ok"

    breaker = Breaker("rate_limits", timeout_s=1.0, pause_s=0.2, failures=FAILURES)
    with pytest.raises(DependencyUnavailable):
        await breaker.call(ask)
    healthy = True
    with pytest.raises(DependencyUnavailable):
        await breaker.call(ask)  # within the pause: the store is not asked
    assert calls == 1
    await asyncio.sleep(0.25)
    assert await breaker.call(ask) == "ok"
    assert calls == 2
