"""The workers' demand counts in the real PostgreSQL (a database of its own): the tiers read the last two hours of
them, and the counts older than 30 days are deleted when the tiers are recomputed, so that the table does not grow
for as long as the platform runs (benchmarks/reports/model-demand-2026-12-07 times the read as it grows)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.worker.caching import TierPolicy
from services.worker.catalog import ModelCatalog
from shared.db import scratch_database
from shared.settings import CommonSettings

NOW = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with scratch_database(CommonSettings().postgres_dsn, "ferry_test_model_demand") as pool:
        await pool.execute(
            "INSERT INTO models (id, source, version, max_model_len) VALUES ('busy', 't', 'v1', 2048),"
            " ('quiet', 't', 'v1', 2048)"
        )
        yield pool


async def test_tiers_read_the_last_hours_and_counts_past_30_days_are_deleted(pool: asyncpg.Pool) -> None:
    catalog = ModelCatalog(pool)
    for days_ago in (400, 31, 29):  # long past: they weigh on no tier
        await catalog.record_demand({"busy": 5000, "quiet": 5000}, NOW - timedelta(days=days_ago))
    await catalog.record_demand({"busy": 1000}, NOW - timedelta(hours=1))  # half of it within the last 60 minutes
    await catalog.record_demand({"busy": 700, "quiet": 50}, NOW)
    plans = {plan.model: plan for plan in await catalog.recompute_tiers(TierPolicy(), NOW)}
    assert (plans["busy"].requests_per_hour, plans["busy"].tier) == (1200, "hot")
    assert (plans["quiet"].requests_per_hour, plans["quiet"].tier) == (50, "cold")
    hours = await pool.fetch("SELECT DISTINCT hour FROM model_demand ORDER BY hour")
    assert [row["hour"] for row in hours] == [
        (NOW - timedelta(days=29)).replace(minute=0),
        (NOW - timedelta(hours=1)).replace(minute=0),
        NOW.replace(minute=0),
    ]
