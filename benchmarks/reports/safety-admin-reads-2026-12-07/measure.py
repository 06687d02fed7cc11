"""Times the review UI's audit page (ReviewStore.audit) and the export of decisions since a time (ReviewStore.decided)
on a database of their own, migrated up to 0026, before and after migration 0027's two indexes. Usage:
PYTHONPATH=. python benchmarks/reports/safety-admin-reads-2026-12-07/measure.py AUDIT_ROWS DECIDED_ITEMS"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.safety.store import ReviewStore
from shared.db import MIGRATIONS_DIR, scratch_database
from shared.settings import CommonSettings

INDEXES = MIGRATIONS_DIR / "0027_safety_admin_reads.sql"


async def median_ms(call: Callable[[], Awaitable[object]], runs: int = 7) -> float:
    await call()  # warm: the pages the read needs are cached, as on a UI in use
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        await call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


async def main(audit_rows: int, decided_items: int) -> None:
    with tempfile.TemporaryDirectory() as before:
        for migration in sorted(MIGRATIONS_DIR.glob("*.sql")):
            if migration.name < INDEXES.name:
                shutil.copy(migration, Path(before) / migration.name)
        async with scratch_database(CommonSettings().postgres_dsn, "measure_admin_reads", Path(before)) as pool:
            # the audit trail, one entry a second back from now; the decided items likewise
            await pool.execute(
                "INSERT INTO safety_audit (actor, action, detail, at) SELECT 'system', 'flagged',"
                " '{\"request_id\": \"r\"}', now() - g * interval '1 second' FROM generate_series(1, $1) g",
                audit_rows,
            )
            await pool.execute(
                "INSERT INTO safety_review_items (request_id, tenant_id, model, stage, action, categories, scores,"
                " priority, deadline_at, snippet, reply_topic, status, decision, decided_at) SELECT 'r' || g, 't', 'm',"
                " 'prompt', 'hold', '{}', '{}', 0, now(), '', 'replies', 'decided', 'approve',"
                " now() - g * interval '1 second' FROM generate_series(1, $1) g",
                decided_items,
            )
            await pool.execute("ANALYZE")
            store = ReviewStore(pool)
            an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
            reads = {
                "audit page (latest 200 entries)": store.audit,
                "decisions of the last hour": lambda: store.decided(an_hour_ago),
            }
            before_ms = {what: await median_ms(read) for what, read in reads.items()}
            await pool.execute(INDEXES.read_text())
            await pool.execute("ANALYZE")
            after_ms = {what: await median_ms(read) for what, read in reads.items()}
    print(f"{audit_rows:,} audit entries, {decided_items:,} decided items; median of 7 reads")
    print("| read | before (ms) | after (ms) |\n| --- | --- | --- |")
    for what in reads:
        print(f"| {what} | {before_ms[what]:.1f} | {after_ms[what]:.1f} |")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
