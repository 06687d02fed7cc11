"""What a pass of the conversations' retention sweep costs (every ingress instance runs it every 5 minutes) as the
items kept grow: ConversationStore.sweep of a git revision (before) and of the working tree (after), each on a
database of its own, migrated by its own revision, alternating. ITEMS items in conversations of 20 among 1,000
tenants that keep text 30 days, spread over the last 29 days, plus a tenant that keeps none with 1% as many (what
the first pass deletes). The first pass deletes those; the next ones find nothing, as most passes do.

    PYTHONPATH=. python benchmarks/reports/conversation-sweep-2026-12-07/measure.py BEFORE_REVISION [ITEMS ...]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import asyncpg

from benchmarks.revisions import module_and_migrations
from services.ingress import adapters as after
from shared.db import MIGRATIONS_DIR, scratch_database
from shared.settings import CommonSettings

TENANTS = 1000
PER_CONVERSATION = 20
EMPTY_PASSES = 5


async def fill(pool: asyncpg.Pool, items: int) -> None:
    await pool.execute(
        "INSERT INTO tenants (id, retention_days) SELECT 't' || n, 30 FROM generate_series(1, $1) n", TENANTS
    )
    await pool.execute("INSERT INTO tenants (id, retention_days) VALUES ('none', 0)")
    conversations = items // PER_CONVERSATION
    await pool.execute(
        "INSERT INTO conversations (id, tenant_id, updated_at)"
        " SELECT 'conv_' || n, CASE WHEN n % 100 = 0 THEN 'none' ELSE 't' || (n % $2 + 1) END,"
        " now() - (n % 29) * interval '1 day' FROM generate_series(1, $1) n",
        conversations,
        TENANTS,
    )
    with_tenant = await pool.fetchval(
        "SELECT count(*) > 0 FROM information_schema.columns"
        " WHERE table_name = 'conversation_items' AND column_name = 'tenant_id'"
    )
    await pool.execute(
        "INSERT INTO conversation_items (conversation_id, id, item, created_at"
        + (", tenant_id)" if with_tenant else ")")
        + " SELECT c.id, 'msg_' || k, '{}', c.updated_at"
        + (", c.tenant_id" if with_tenant else "")
        + " FROM conversations c, generate_series(1, $1) k",
        PER_CONVERSATION,
    )
    await pool.execute("VACUUM ANALYZE conversation_items")
    await pool.execute("VACUUM ANALYZE conversations")


async def passes(store: ModuleType, migrations: Path, items: int) -> tuple[float, int, float]:
    """The first pass (ms) and the rows it deleted, and the median of the passes after it (ms)."""
    async with scratch_database(CommonSettings().postgres_dsn, "ferry_conversation_sweep", migrations) as pool:
        await fill(pool, items)
        sweeps = store.ConversationStore(pool)
        began = time.perf_counter()
        deleted = await sweeps.sweep()
        first = (time.perf_counter() - began) * 1000
        empty = []
        for _ in range(EMPTY_PASSES):
            began = time.perf_counter()
            assert await sweeps.sweep() == 0
            empty.append((time.perf_counter() - began) * 1000)
    return first, deleted, statistics.median(empty)


async def main(rev: str, sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        before = module_and_migrations(rev, "services/ingress/adapters.py", Path(scratch))
        sides = {"before": before, "after": (after, MIGRATIONS_DIR)}
        print(f"before: {rev}; after: the working tree\n")
        print("| items kept | first pass, before / after (ms) | rows it deleted | later passes, before / after (ms) |")
        print("| --- | --- | --- | --- |")
        for n, items in enumerate(sizes):
            order = ["before", "after"] if n % 2 == 0 else ["after", "before"]
            got = {side: await passes(*sides[side], items) for side in order}
            (b_first, b_deleted, b_empty), (a_first, a_deleted, a_empty) = got["before"], got["after"]
            assert b_deleted == a_deleted, got
            print(
                f"| {items:,} | {b_first:.1f} / {a_first:.1f} | {a_deleted:,} | {b_empty:.1f} / {a_empty:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], [int(size) for size in sys.argv[2:]] or [100_000, 1_000_000]))
