"""The stored responses against the real PostgreSQL, a database of its own: a chain of responses (previous_response_id)
read back whole while each stores only what it adds, through deletes and retention; and looking up stored items by id
(ResponseStore.items, for an `item_reference` in a Responses API input): which copy of an item is found, and what is
never found."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from services.ingress.adapters import ResponseStore, StoredResponse
from shared.db import MIGRATIONS_DIR, migrate, scratch_database
from shared.settings import CommonSettings


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with scratch_database(CommonSettings().postgres_dsn, "ferry_test_response_store") as pool:
        await pool.execute("INSERT INTO tenants (id, retention_days) VALUES ('acme', 1), ('other', 1), ('gone', 0)")
        yield pool


def item(item_id: str, text: str) -> dict[str, object]:
    return {"id": item_id, "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def store(pool: asyncpg.Pool, response_id: str, tenant_id: str, ago_s: int, *items: dict[str, object]) -> None:
    """A response stored before threads (migration 0024): its whole conversation, in a thread of its own."""
    await pool.execute(
        "INSERT INTO response_threads (id, tenant_id, last_at) VALUES ($1, $2, now() - $3 * interval '1 second')",
        response_id,
        tenant_id,
        ago_s,
    )
    await pool.execute(
        "INSERT INTO stored_responses (id, tenant_id, created_at, conversation, response, thread_id)"
        " VALUES ($1, $2, now() - $3 * interval '1 second', $4, '{}', $1)",
        response_id,
        tenant_id,
        ago_s,
        json.dumps(list(items)),
    )


async def answer(
    responses: ResponseStore, response_id: str, before: StoredResponse | None, said: str
) -> StoredResponse:
    """Stores a response continuing ``before`` (previous_response_id), as the ingress does: the conversation before
    it, a user message, then an output message; the response as it is read back."""
    turn = [item(f"msg_in_{response_id}", said), item(f"msg_out_{response_id}", f"answer to {said}")]
    conversation = [*(before.conversation if before else []), *turn]
    previous = before.response["id"] if before else None
    stored = StoredResponse(conversation, {"id": response_id, "status": "completed", "previous_response_id": previous})
    assert await responses.save("acme", response_id, stored)
    loaded = await responses.load("acme", response_id)
    assert loaded is not None
    return loaded


async def stored_items(pool: asyncpg.Pool) -> int:
    """How many items the stored responses hold, all told."""
    return int(await pool.fetchval("SELECT coalesce(sum(jsonb_array_length(conversation)), 0) FROM stored_responses"))


async def test_a_chain_of_responses_reads_back_whole_and_stores_each_item_once(pool: asyncpg.Pool) -> None:
    responses = ResponseStore(pool)
    turns, last = 40, None
    for n in range(turns):
        last = await answer(responses, f"resp_{n}", last, f"turn {n}")
    assert last is not None and len(last.conversation) == 2 * turns
    assert [i["id"] for i in last.conversation[:4]] == [
        "msg_in_resp_0",
        "msg_out_resp_0",
        "msg_in_resp_1",
        "msg_out_resp_1",
    ]
    assert last.conversation[-1] == item(f"msg_out_resp_{turns - 1}", f"answer to turn {turns - 1}")
    alone = await responses.load("acme", f"resp_{turns - 1}", with_conversation=False)  # as GET reads it
    assert alone is not None and alone.response == last.response and alone.conversation == []
    middle = await responses.load("acme", "resp_9")
    assert middle is not None and middle.conversation == last.conversation[:20]
    # each turn's two items once: copies of the conversation before each would be 2 + 4 + ... + 80 = 1,640
    assert await stored_items(pool) == 2 * turns
    # two answers to the same response: each reads its own branch
    branch = await answer(responses, "resp_branch", middle, "another way")
    assert branch.conversation == [*middle.conversation, *branch.conversation[20:]] and len(branch.conversation) == 22


async def test_a_deleted_response_stays_read_by_those_continuing_it_and_goes_with_the_last(pool: asyncpg.Pool) -> None:
    responses = ResponseStore(pool)
    first = await answer(responses, "resp_a", None, "one")
    second = await answer(responses, "resp_b", first, "two")
    third = await answer(responses, "resp_c", second, "three")
    assert await responses.delete("acme", "resp_a") and await responses.delete("acme", "resp_b")
    assert await responses.load("acme", "resp_a") is None and await responses.load("acme", "resp_b") is None
    assert not await responses.delete("acme", "resp_b")  # once
    kept = await responses.load("acme", "resp_c")
    assert kept is not None and kept.conversation == third.conversation and len(kept.conversation) == 6
    assert await responses.items("acme", ["msg_in_resp_a"]) == {"msg_in_resp_a": item("msg_in_resp_a", "one")}
    assert await responses.delete("acme", "resp_c")  # nothing continues the deleted ones now: their text goes
    assert await pool.fetchval("SELECT count(*) FROM stored_responses") == 0
    assert await pool.fetchval("SELECT count(*) FROM response_threads") == 0


async def test_continuing_a_deleted_response_that_is_gone_stores_the_whole_conversation(pool: asyncpg.Pool) -> None:
    responses = ResponseStore(pool)
    first = await answer(responses, "resp_a", None, "one")
    assert await responses.delete("acme", "resp_a")  # between the request's read of it and its answer being stored
    second = await answer(responses, "resp_b", first, "two")
    assert len(second.conversation) == 4 and await stored_items(pool) == 4


async def test_a_thread_is_kept_while_retention_covers_its_latest_response(pool: asyncpg.Pool) -> None:
    responses = ResponseStore(pool)
    first = await answer(responses, "resp_a", None, "one")
    await answer(responses, "resp_b", first, "two")
    await pool.execute("UPDATE stored_responses SET created_at = now() - interval '2 days' WHERE id = 'resp_a'")
    assert await responses.load("acme", "resp_a") is None  # past its own retention (a day)...
    latest = await responses.load("acme", "resp_b")
    assert latest is not None and len(latest.conversation) == 4  # ...yet read by the response continuing it
    assert await responses.sweep() == 0
    await pool.execute("UPDATE response_threads SET last_at = now() - interval '2 days'")
    await pool.execute("UPDATE stored_responses SET created_at = now() - interval '2 days'")
    assert await responses.sweep() == 2
    assert await pool.fetchval("SELECT count(*) FROM stored_responses") == 0


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


async def test_a_response_stored_before_threads_is_read_and_continued_after_the_migration(tmp_path: Path) -> None:
    for migration in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if migration.name < "0024":
            shutil.copy(migration, tmp_path / migration.name)
    async with scratch_database(CommonSettings().postgres_dsn, "ferry_test_response_threads", tmp_path) as pool:
        await pool.execute("INSERT INTO tenants (id, retention_days) VALUES ('acme', 1)")
        whole = [item("msg_1", "one"), item("msg_2", "answer")]
        await pool.execute(
            "INSERT INTO stored_responses (id, tenant_id, conversation, response) VALUES ('resp_old', 'acme', $1, $2)",
            json.dumps(whole),
            json.dumps({"id": "resp_old", "status": "completed"}),
        )
        assert "0024_response_threads.sql" in await migrate(pool)
        responses = ResponseStore(pool)
        old = await responses.load("acme", "resp_old")
        assert old is not None and old.conversation == whole
        new = await answer(responses, "resp_new", old, "two")
        assert new.conversation[:2] == whole and len(new.conversation) == 4 and await stored_items(pool) == 4
        assert await responses.items("acme", ["msg_1"]) == {"msg_1": item("msg_1", "one")}
