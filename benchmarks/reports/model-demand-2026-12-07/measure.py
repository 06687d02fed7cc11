"""How long the workers' tier recomputation reads demand (worker.catalog.ModelCatalog.demand) as the demand counts
grow: the query of a git revision (before) and of the working tree (after), alternating in one run, on a database of
its own holding hourly counts for M models over D days (every worker runs it every 5 minutes).

    PYTHONPATH=. python benchmarks/reports/model-demand-2026-12-07/measure.py BEFORE_REVISION [MODELSxDAYS ...]
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
import types
from datetime import UTC, datetime

from shared.db import scratch_database
from shared.settings import CommonSettings

NOW = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)
ROUNDS = 5


def catalog_class(source: str) -> type:
    module = sys.modules["catalog_measured"] = types.ModuleType("catalog_measured")
    exec(compile(source, "catalog.py", "exec"), module.__dict__)
    return module.ModelCatalog  # type: ignore[no-any-return]


async def measure(before: type, after: type, models: int, days: int) -> str:
    async with scratch_database(CommonSettings().postgres_dsn, "ferry_model_demand") as pool:
        await pool.execute(
            "INSERT INTO models (id, source, version, max_model_len)"
            " SELECT 'model-' || m, 'test', 'v1', 2048 FROM generate_series(1, $1) m",
            models,
        )
        await pool.execute(
            "INSERT INTO model_demand (model_id, hour, requests) SELECT 'model-' || m,"
            " date_trunc('hour', $2::timestamptz) - h * interval '1 hour', 100"
            " FROM generate_series(1, $1) m, generate_series(0, $3 * 24 - 1) h",
            models,
            NOW,
            days,
        )
        await pool.execute("VACUUM ANALYZE model_demand")
        times: dict[str, list[float]] = {"before": [], "after": []}
        figures = {}
        for _ in range(ROUNDS):
            for name, cls in (("before", before), ("after", after)):
                began = time.perf_counter()
                figures[name] = await cls(pool).demand(NOW)
                times[name].append((time.perf_counter() - began) * 1000)
        assert figures["before"] == figures["after"]
        rows = models * days * 24
        b, a = statistics.median(times["before"]), statistics.median(times["after"])
        return f"| {models} x {days} days | {rows:,} | {b:.1f} | {a:.2f} | {b / a:.0f}x |"


async def main() -> None:
    revision, runs = sys.argv[1], sys.argv[2:] or ["10x30", "200x30", "200x365"]
    before = catalog_class(
        subprocess.run(
            ["git", "show", f"{revision}:services/worker/catalog.py"], capture_output=True, text=True, check=True
        ).stdout
    )
    after = catalog_class(open("services/worker/catalog.py").read())
    print(f"median of {ROUNDS} alternating rounds, ms")
    print("| models x days of counts | rows | before (ms) | after (ms) | before / after |")
    print("| --- | --- | --- | --- | --- |")
    for run in runs:
        models, days = (int(n) for n in run.split("x"))
        print(await measure(before, after, models, days), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
