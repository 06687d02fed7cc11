"""PostgreSQL adapter for the worker's side of the model registry: versions and variants of the models it hosts, demand
counts per model and hour, and the tiers computed from them (tables of migration 0003)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

import asyncpg

from services.worker.caching import Tier, TierPlan, TierPolicy, hourly_rate, plan_tiers
from services.worker.variants import VARIANTS
from shared.registry import ModelRecord


def _hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


DEMAND_KEPT = timedelta(days=30)
"""How long hourly demand counts are kept: the tiers read the last two hours; the rest is for operators."""


class ModelCatalog:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._pruned_hour: datetime | None = None

    async def record_demand(self, counts: dict[str, int], at: datetime) -> None:
        """Adds requests served per model to the hour bucket of ``at``."""
        if not counts:
            return
        await self._pool.executemany(
            """INSERT INTO model_demand (model_id, hour, requests) VALUES ($1, $2, $3)
               ON CONFLICT (model_id, hour) DO UPDATE SET requests = model_demand.requests + EXCLUDED.requests""",
            [(model, _hour(at), count) for model, count in counts.items() if count],
        )

    async def demand(self, now: datetime) -> dict[str, float]:
        """Requests in the last hour per enabled model (0 for a model nobody asked for)."""
        current = _hour(now)
        rows = await self._pool.fetch(
            """SELECT m.id,
                      COALESCE(SUM(d.requests) FILTER (WHERE d.hour = $1), 0) AS current_hour,
                      COALESCE(SUM(d.requests) FILTER (WHERE d.hour = $2), 0) AS previous_hour
               FROM models m LEFT JOIN model_demand d ON d.model_id = m.id AND d.hour >= $2
               WHERE m.enabled GROUP BY m.id""",
            current,
            current - timedelta(hours=1),
        )
        elapsed = (now - current).total_seconds() / 3600
        return {r["id"]: hourly_rate(int(r["previous_hour"]), int(r["current_hour"]), elapsed) for r in rows}

    async def recompute_tiers(self, policy: TierPolicy, now: datetime) -> list[TierPlan]:
        """Tiers from observed demand, saved in model_tiers; returns them. Once an hour, demand counts older than
        DEMAND_KEPT are deleted."""
        if self._pruned_hour != _hour(now):
            await self._pool.execute("DELETE FROM model_demand WHERE hour < $1", _hour(now) - DEMAND_KEPT)
            self._pruned_hour = _hour(now)
        plans = plan_tiers(await self.demand(now), policy)
        await self._pool.executemany(
            """INSERT INTO model_tiers (model_id, tier, requests_per_hour, replicas, computed_at)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (model_id) DO UPDATE SET tier = EXCLUDED.tier,
                 requests_per_hour = EXCLUDED.requests_per_hour, replicas = EXCLUDED.replicas,
                 computed_at = EXCLUDED.computed_at""",
            [(p.model, p.tier, p.requests_per_hour, p.replicas, now) for p in plans],
        )
        return plans

    async def tiers(self) -> dict[str, Tier]:
        """The latest computed tier of each model (a model never computed has no entry: treat it as cold)."""
        rows = await self._pool.fetch("SELECT model_id, tier FROM model_tiers")
        return {r["model_id"]: r["tier"] for r in rows}

    async def default_variants(self, model_ids: list[str]) -> dict[str, str]:
        """The default variant of each of these models that has an enabled one (model_variants.is_default)."""
        rows = await self._pool.fetch(
            "SELECT model_id, variant FROM model_variants WHERE is_default AND enabled AND model_id = ANY($1)",
            model_ids,
        )
        return {r["model_id"]: r["variant"] for r in rows}

    async def set_default_variant(self, model_id: str, variant: str) -> bool:
        """Makes ``variant`` the model's default, for requests that name none; False when the registry has no enabled
        variant of that name for the model (workers record the variants when they start)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"model_variants:{model_id}")
            enabled = await conn.fetchval(
                "SELECT enabled FROM model_variants WHERE model_id = $1 AND variant = $2", model_id, variant
            )
            if not enabled:
                return False
            # two statements: the one-default index is checked row by row, so the old default goes first
            await conn.execute("UPDATE model_variants SET is_default = false WHERE model_id = $1", model_id)
            await conn.execute(
                "UPDATE model_variants SET is_default = true WHERE model_id = $1 AND variant = $2", model_id, variant
            )
        return True

    async def record_models(
        self, records: list[ModelRecord], default_variant: str, problems: Mapping[str, str]
    ) -> None:
        """Records each model's current version and its variants: enabled when they can run on this hardware (not in
        ``problems``, variants.cpu_problems). The
        first worker to record a model sets its default variant (its own); later ones leave it."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                """INSERT INTO model_versions (model_id, version, source) VALUES ($1, $2, $3)
                   ON CONFLICT (model_id, version) DO NOTHING""",
                [(r.id, r.version, r.source) for r in records],
            )
            for record in records:
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"model_variants:{record.id}")
                has_default = await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM model_variants WHERE model_id = $1 AND is_default)", record.id
                )
                await conn.executemany(
                    """INSERT INTO model_variants (model_id, variant, quantization, dtype, is_default, enabled)
                       VALUES ($1, $2, $3, $4, $5, $6)
                       ON CONFLICT (model_id, variant) DO UPDATE SET quantization = EXCLUDED.quantization,
                         dtype = EXCLUDED.dtype, enabled = EXCLUDED.enabled""",
                    [
                        (
                            record.id,
                            v.name,
                            v.quantization,
                            v.dtype,
                            v.name == default_variant and not has_default,
                            v.name not in problems,
                        )
                        for v in VARIANTS.values()
                    ],
                )
