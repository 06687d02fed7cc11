"""Looking up stored items by id (ResponseStore.items, for an `item_reference` in a Responses API input) against the
real PostgreSQL, a database of its own: which copy of an item is found, and what is never found."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.ingress.adapters import ResponseStore
from shared.db import scratch_database
from shared.settings import CommonSettings


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with scratch_database(CommonSettings().postgres_dsn, "ferry_test_response_store") as pool:
        await pool.execute("INSERT INTO tenants (id, retention_days) VALUES ('acme', 1), ('other', 1), ('gone', 0)")
        yield pool


def item(item_id: str, text: str) -> dict[str, object]:
    return {"id": item_id, "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def store(pool: asyncpg.Pool, response_id: str, tenant_id: str, ago_s: int, *items: dict[str, object]) -> None:
    await pool.execute(
        "INSERT INTO stored_responses (id, tenant_id, created_at, conversation, response)"
        " VALUES ($1, $2, now() - $3 * interval '1 second', $4, '{}')",
        response_id,
        tenant_id,
        ago_s,
        json.dumps(list(items)),
    )


async def test_an_item_is_found_by_its_id_in_the_latest_response_holding_it(pool: asyncpg.Pool) -> None:
    await store(pool, "resp_1", "acme", 60, item("msg_a", "first"), item("msg_b", "answer"))
    # a continued conversation stores the items before it again, here one edited since
    await store(pool, "resp_2", "acme", 30, item("msg_a", "first, edited"), item("msg_c", "more"))
    for n in range(300):  # more responses, none holding them
        await store(pool, f"resp_x{n}", "acme", 10, item(f"msg_x{n}", "filler"))
    found = await ResponseStore(pool).items("acme", ["msg_a", "msg_b", "msg_missing", "msg_a"])
    assert found == {"msg_a": item("msg_a", "first, edited"), "msg_b": item("msg_b", "answer")}


async def test_another_tenants_items_and_those_past_retention_are_not_found(pool: asyncpg.Pool) -> None:
    await store(pool, "resp_o", "other", 10, item("msg_o", "theirs"))
    await store(pool, "resp_g", "gone", 10, item("msg_g", "not retained"))
    await store(pool, "resp_old", "acme", 2 * 86_400, item("msg_old", "two days old"))
    responses = ResponseStore(pool)
    assert await responses.items("acme", ["msg_o", "msg_g", "msg_old"]) == {}
    assert await responses.items("other", ["msg_o"]) == {"msg_o": item("msg_o", "theirs")}
