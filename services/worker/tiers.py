"""``python -m services.worker.tiers``: recomputes every model's tier (hot / warm / cold) from the demand the workers
recorded in the last hour, saves it in model_tiers and prints it. Thresholds and replicas: FERRY_WORKER_TIER_*."""

from __future__ import annotations

import asyncio

from services.worker.catalog import ModelCatalog
from services.worker.config import WorkerSettings
from shared.contracts import utc_now
from shared.db import connect_pool
from shared.settings import CommonSettings


async def main() -> None:
    pool = await connect_pool(CommonSettings().postgres_dsn)
    try:
        plans = await ModelCatalog(pool).recompute_tiers(WorkerSettings().tier_policy(), utc_now())
    finally:
        await pool.close()
    print(f"{'model':<28} {'tier':<5} {'req/h':>8} replicas")
    for plan in plans:
        print(f"{plan.model:<28} {plan.tier:<5} {plan.requests_per_hour:>8.0f} {plan.replicas}")


if __name__ == "__main__":
    asyncio.run(main())
