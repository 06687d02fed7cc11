"""What one pass of the stored responses' retention sweep costs when there is little or nothing to delete (its usual
pass: every ingress instance runs it every 5 minutes), as the table grows: the condition of a git revision (before)
and of the working tree (after), alternating, each DELETE rolled back so that both face the same rows, on a database
of its own. R rows spread over the last 29 days among 1,000 tenants that keep text 30 days, plus one tenant that
keeps none with 1% as many rows (what a pass deletes), or with ROWS[:GONE] GONE of them (a backlog).

    PYTHONPATH=. python benchmarks/reports/sweep-scan-2026-12-07/measure.py BEFORE_REVISION [ROWS[:GONE] ...]
"""

from __future__ import annotations

import asyncio
import re
import statistics
import subprocess
import sys
import time

import asyncpg

from shared.db import scratch_database
from shared.settings import CommonSettings

ROUNDS = 5
TENANTS = 1000


def sweep_statement(source: str) -> str:
    """The stored responses' sweep DELETE, as adapters.py of that source writes it."""
    retained = re.search(r'^_RETAINED = "(.*)"$', source, re.M)
    swept = re.search(r'f"(DELETE FROM stored_responses [^"]*)"', source)
    assert retained and swept, "the sweep's statement moved: update this script"
    statement = swept.group(1).replace("{_RETAINED}", retained.group(1))
    past = re.search(r"^_PAST_RETENTION = \(\n((?:    \".*\"\n)+)\)", source, re.M)
    if past:  # a parenthesised run of string literals
        statement = statement.replace("{_PAST_RETENTION}", "".join(re.findall(r'"(.*)"', past.group(1))))
    return statement


async def timed(pool: asyncpg.Pool, statement: str) -> tuple[float, int]:
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("SET LOCAL jit = off")  # as adapters._swept runs both
        began = time.perf_counter()
        done = await conn.execute(statement)
        took = (time.perf_counter() - began) * 1000
        await transaction.rollback()
    return took, int(done.split()[-1])


async def measure(statements: dict[str, str], rows: int, gone: int) -> str:
    async with scratch_database(CommonSettings().postgres_dsn, "ferry_sweep_scan") as pool:
        await pool.execute(
            "INSERT INTO tenants (id, retention_days) SELECT 't' || n, 30 FROM generate_series(1, $1) n", TENANTS
        )
        await pool.execute("INSERT INTO tenants (id, retention_days) VALUES ('none', 0)")
        await pool.execute(
            "INSERT INTO stored_responses (id, tenant_id, conversation, response, created_at)"
            " SELECT 'resp_' || n, 't' || (n % $2 + 1), '[]', '{}',"
            " now() - (n % 29) * interval '1 day' - (n % 1000) * interval '1 second' FROM generate_series(1, $1) n",
            rows,
            TENANTS,
        )
        await pool.execute(
            "INSERT INTO stored_responses (id, tenant_id, conversation, response)"
            " SELECT 'gone_' || n, 'none', '[]', '{}' FROM generate_series(1, $1) n",
            gone,
        )
        await pool.execute("VACUUM ANALYZE")
        times: dict[str, list[float]] = {name: [] for name in statements}
        deleted = {}
        for _ in range(ROUNDS):
            for name, statement in statements.items():
                took, deleted[name] = await timed(pool, statement)
                times[name].append(took)
        assert len(set(deleted.values())) == 1, deleted
        before, after = (statistics.median(times[name]) for name in statements)
        return f"| {rows:,} | {deleted['before']:,} | {before:.1f} | {after:.1f} | {before / after:.1f}x |"


async def main() -> None:
    revision, runs = sys.argv[1], sys.argv[2:] or ["100000", "1000000"]
    before = subprocess.run(
        ["git", "show", f"{revision}:services/ingress/adapters.py"], capture_output=True, text=True, check=True
    ).stdout
    statements = {
        "before": sweep_statement(before),
        "after": sweep_statement(open("services/ingress/adapters.py").read()),
    }
    for name, statement in statements.items():
        print(f"- {name}: `{statement}`")
    print(f"\nmedian of {ROUNDS} alternating rounds, ms\n")
    print("| stored responses | deleted by a pass | before (ms) | after (ms) | before / after |")
    print("| --- | --- | --- | --- | --- |")
    for run in runs:
        rows, _, gone = run.partition(":")
        print(await measure(statements, int(rows), int(gone or int(rows) // 100)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
