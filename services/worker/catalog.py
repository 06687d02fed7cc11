"""PostgreSQL adapter for the worker's side of the model registry: demand counts per model and hour, and the tiers
computed from them (tables of migration 0003)."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from services.worker.caching import Tier, TierPlan, TierPolicy, hourly_rate, plan_tiers


def _hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


class ModelCatalog:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

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
               FROM models m LEFT JOIN model_demand d ON d.model_id = m.id
               WHERE m.enabled GROUP BY m.id""",
            current,
            current - timedelta(hours=1),
        )
        elapsed = (now - current).total_seconds() / 3600
        return {r["id"]: hourly_rate(int(r["previous_hour"]), int(r["current_hour"]), elapsed) for r in rows}

    async def recompute_tiers(self, policy: TierPolicy, now: datetime) -> list[TierPlan]:
        """Tiers from observed demand, saved in model_tiers; returns them."""
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
