"""The ingress's retention sweeps against the real PostgreSQL (a database of its own): a backlog goes in one pass, and
only what no retention covers. A sweep is not held to the timeout of the lookups that serve requests (here far
shorter than any sweep takes): a large backlog takes longer to delete than a lookup may take."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.ingress.adapters import BatchStore, ConversationStore, FileStore, ResponseStore, SweepPasses
from shared.db import scratch_database
from shared.settings import CommonSettings

BACKLOG = 5000
LOOKUP_TIMEOUT_S = 0.0005  # what requests' lookups may take: far less than deleting the backlog does


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with scratch_database(CommonSettings().postgres_dsn, "ferry_test_sweeps") as pool:
        # "gone": its retention was turned off, so none of its text may stay; "kept" retains it for a day
        await pool.execute("INSERT INTO tenants (id, retention_days) VALUES ('gone', 0), ('kept', 1)")
        yield pool


async def count(pool: asyncpg.Pool, table: str, tenant_id: str) -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", tenant_id))


async def test_stored_responses_past_retention_go_in_one_pass(pool: asyncpg.Pool) -> None:
    for tenant_id, rows in [("gone", BACKLOG), ("kept", 3)]:
        ids = [(f"resp_{tenant_id}_{n}", tenant_id) for n in range(rows)]
        await pool.executemany("INSERT INTO response_threads (id, tenant_id) VALUES ($1, $2)", ids)
        await pool.executemany(
            "INSERT INTO stored_responses (id, tenant_id, conversation, response, thread_id, item_count)"
            " VALUES ($1, $2, '[]', '{}', $1, 0)",
            ids,
        )
    assert await ResponseStore(pool, LOOKUP_TIMEOUT_S).sweep() == BACKLOG
    assert await count(pool, "stored_responses", "gone") == 0 and await count(pool, "stored_responses", "kept") == 3


async def test_conversations_and_their_items_past_retention_go_in_one_pass(pool: asyncpg.Pool) -> None:
    async def conversation(conversation_id: str, tenant_id: str, items: int, ago_s: int = 0) -> None:
        await pool.execute(
            "INSERT INTO conversations (id, tenant_id, updated_at) VALUES ($1, $2, now() - $3 * interval '1 second')",
            conversation_id,
            tenant_id,
            ago_s,
        )
        await pool.executemany(
            "INSERT INTO conversation_items (conversation_id, id, position, item, tenant_id, created_at)"
            " VALUES ($1, $2, $3, '{}', $4, now() - $5 * interval '1 second')",
            [(conversation_id, f"msg_{n}", n, tenant_id, ago_s) for n in range(items)],
        )

    await conversation("conv_gone", "gone", BACKLOG)
    await conversation("conv_kept", "kept", 3)
    await conversation("conv_old", "kept", 2, ago_s=2 * 86_400)  # past the day "kept" retains
    # an item added two days ago to a conversation changed since: the item goes, the conversation stays
    await pool.execute(
        "INSERT INTO conversation_items (conversation_id, id, item, tenant_id, created_at)"
        " VALUES ('conv_kept', 'msg_old', '{}', 'kept', now() - interval '2 days')"
    )
    # the items, then the two conversations
    assert await ConversationStore(pool, LOOKUP_TIMEOUT_S).sweep() == BACKLOG + 2 + 1 + 2
    left = await pool.fetch("SELECT conversation_id, count(*) FROM conversation_items GROUP BY conversation_id")
    assert [tuple(row) for row in left] == [("conv_kept", 3)]
    assert [row["id"] for row in await pool.fetch("SELECT id FROM conversations")] == ["conv_kept"]


async def test_a_batch_past_retention_goes_with_all_its_results(pool: asyncpg.Pool) -> None:
    for tenant_id in ["gone", "kept"]:
        await pool.execute(
            "INSERT INTO batches (id, tenant_id, batch) VALUES ($1, $2, '{}')", f"batch_{tenant_id}", tenant_id
        )
        await pool.executemany(
            "INSERT INTO batch_results (batch_id, line, succeeded, result) VALUES ($1, $2, true, '{}')",
            [(f"batch_{tenant_id}", n) for n in range(1, BACKLOG + 1)],
        )
    assert await BatchStore(pool, LOOKUP_TIMEOUT_S).sweep() == 1
    left = await pool.fetch("SELECT batch_id, count(*) FROM batch_results GROUP BY batch_id")
    assert [tuple(row) for row in left] == [("batch_kept", BACKLOG)]
    assert await count(pool, "batches", "gone") == 0 and await count(pool, "batches", "kept") == 1


async def test_files_past_retention_go_in_one_pass(pool: asyncpg.Pool) -> None:
    files = 40
    for tenant_id, rows in [("gone", files), ("kept", 2)]:
        await pool.executemany(
            "INSERT INTO files (id, tenant_id, purpose, filename, content) VALUES ($1, $2, 'batch', 'in.jsonl', $3)",
            [(f"file_{tenant_id}_{n}", tenant_id, b"{}\n") for n in range(rows)],
        )
    # "kept" retains files for a day, but one of its files expired an hour ago (its upload's expires_after)
    await pool.execute(
        "INSERT INTO files (id, tenant_id, purpose, filename, content, expires_at)"
        " VALUES ('file_expired', 'kept', 'batch', 'in.jsonl', '', now() - interval '1 hour')"
    )
    assert await FileStore(pool, LOOKUP_TIMEOUT_S).sweep() == files + 1
    assert await count(pool, "files", "gone") == 0 and await count(pool, "files", "kept") == 2


async def test_one_instance_runs_each_pass_of_a_sweep(pool: asyncpg.Pool) -> None:
    """Every ingress instance runs the sweeps on its own 5-minute timer: the first to claim an interval's pass runs
    it, and the others skip theirs until the next interval."""
    first, second = SweepPasses(pool), SweepPasses(pool)
    assert await first.claim("kept-text", 300.0)
    assert not await second.claim("kept-text", 300.0)
    assert not await first.claim("kept-text", 300.0)
    assert await second.claim("other-sweep", 300.0)  # each sweep is claimed apart
    # 4.5 minutes on (0.9 of the interval): the pass is due, whoever comes first takes it, once
    await pool.execute("UPDATE sweep_passes SET started_at = started_at - interval '270 seconds'")
    assert await second.claim("kept-text", 300.0)
    assert not await first.claim("kept-text", 300.0)
