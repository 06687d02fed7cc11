"""How long the retention sweep of one large batch takes (adapters.BatchStore.sweep: one DELETE, its results going by
cascade), on a database of its own, against the 2 s timeout of the lookups that serve requests, which bound sweeps
too before 7 December. Each result line is about 1 KB, as a chat completion's output line is.

    PYTHONPATH=. python benchmarks/reports/sweep-timeout-2026-12-07/measure.py [RESULTS ...]
"""

from __future__ import annotations

import asyncio
import sys
import time

import asyncpg

from services.ingress.adapters import BatchStore
from shared.db import scratch_database
from shared.settings import CommonSettings

LINE = '{"id": "batch_req_x", "custom_id": "request-1", "response": {"status_code": 200, "body": {"text": "%s"}}}'


async def fill(pool: asyncpg.Pool, results: int) -> None:
    await pool.execute("INSERT INTO batches (id, tenant_id, batch) VALUES ('batch_1', 'gone', '{}')")
    text = LINE % ("word " * 180)
    await pool.copy_records_to_table(
        "batch_results",
        records=[("batch_1", n, True, text) for n in range(1, results + 1)],
        columns=["batch_id", "line", "succeeded", "result"],
    )
    await pool.execute("VACUUM ANALYZE batch_results")


async def main(sizes: list[int]) -> None:
    async with scratch_database(CommonSettings().postgres_dsn, "ferry_sweep_measure") as pool:
        await pool.execute("INSERT INTO tenants (id, retention_days) VALUES ('gone', 0)")
        print("| results in the batch | sweep (s) | rows per second |")
        print("| --- | --- | --- |")
        for size in sizes:
            await fill(pool, size)
            started = time.perf_counter()
            assert await BatchStore(pool).sweep() == 1
            spent = time.perf_counter() - started
            print(f"| {size:,} | {spent:.2f} | {size / spent:,.0f} |")


if __name__ == "__main__":
    asyncio.run(main([int(n) for n in sys.argv[1:]] or [50_000, 300_000, 1_000_000]))
