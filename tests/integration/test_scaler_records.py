"""The scaler's records in the real PostgreSQL (a database of its own): demand history, forecasts and decisions older
than what is kept are deleted, and the rest stays."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from services.scaler.adapters import ScalerStore
from services.scaler.config import ScalerSettings
from services.scaler.policy import Decision
from shared.contracts import utc_now
from shared.db import scratch_database
from shared.settings import CommonSettings


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with scratch_database(CommonSettings().postgres_dsn, "ferry_test_scaler_records") as pool:
        yield pool


async def test_records_older_than_kept_are_deleted_and_the_rest_stays(pool: asyncpg.Pool) -> None:
    store, now = ScalerStore(pool), utc_now()
    ages = [timedelta(days=100), timedelta(days=91), timedelta(days=89), timedelta(minutes=5)]
    for age in ages:
        await store.add_demand("m", now - age, 7, 60)
        await store.add_forecast("m", now - age, 420.0, "level")
        held = Decision("m", now - age, "reactive", "warm", current=1, desired=1, reason="steady", signals={})
        await store.add_decision(held)
    assert await store.prune(now - timedelta(days=ScalerSettings().records_kept_days)) == 2 * 3
    history = await store.demand_history("m", now - timedelta(days=365))
    assert [requests for _, requests, _ in history] == [7, 7]  # the last 89 days
    assert len(await store.decisions("m", 10)) == 2


def test_the_history_the_forecast_learns_from_is_kept() -> None:
    with pytest.raises(ValueError, match="history_days"):
        ScalerSettings(history_days=28, records_kept_days=7)
