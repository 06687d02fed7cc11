"""How long ResponseStore.items takes (an `item_reference` in a Responses API input, as Codex and the Vercel AI SDK
send them) for a tenant with many stored responses: the query before 7 December, with the index of migration 0014
(every value of the conversations), against the one now, with 0023's (the items' ids), on a database of its own.

    PYTHONPATH=. python benchmarks/reports/item-reference-lookup-2026-12-07/measure.py [RESPONSES ...]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

import asyncpg

from services.ingress.adapters import ResponseStore
from shared.db import MIGRATIONS_DIR, scratch_database
from shared.settings import CommonSettings

ITEMS = 10
BEFORE = (
    "SELECT ref, found.item FROM unnest($2::text[]) ref CROSS JOIN LATERAL ("
    " SELECT item FROM stored_responses s JOIN tenants t ON t.id = s.tenant_id,"
    " jsonb_array_elements(s.conversation) item"
    " WHERE s.tenant_id = $1 AND s.conversation @> jsonb_build_array(jsonb_build_object('id', ref))"
    " AND item->>'id' = ref AND s.created_at + t.retention_days * interval '1 day' > now()"
    " ORDER BY s.created_at DESC LIMIT 1) found"
)


def conversation(response: int) -> str:
    words = "lorem ipsum dolor sit amet " * 16
    role = ["user", "assistant"]
    content = [{"type": "input_text", "text": f"{response} {k} {words}"} for k in range(ITEMS)]  # each its own
    items = [
        {"id": f"msg_{response}_{k}", "type": "message", "role": role[k % 2], "content": [content[k]]}
        for k in range(ITEMS)
    ]
    return json.dumps(items)


async def median_ms(lookup: object, rounds: int = 5) -> tuple[float, int]:
    spent, found = [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        found = len(await lookup())  # type: ignore[operator]
        spent.append(time.perf_counter() - started)
    return statistics.median(spent) * 1000, found


async def measure(pool: asyncpg.Pool, responses: int) -> list[str]:
    """Prints the lookups before and now; returns the sizes of the index before and now."""
    await pool.execute("DELETE FROM stored_responses")
    await pool.copy_records_to_table(
        "stored_responses",
        records=[(f"resp_{n}", "heavy", conversation(n), "{}") for n in range(responses)],
        columns=["id", "tenant_id", "conversation", "response"],
    )
    await pool.execute("VACUUM ANALYZE stored_responses")
    lookups = [
        ("the latest response's item", f"msg_{responses - 1}_{ITEMS - 1}"),
        ("an early response's item", f"msg_0_{ITEMS - 1}"),
        ("an id no response holds", "msg_missing"),
    ]
    await pool.execute("DROP INDEX stored_responses_item_ids")
    await pool.execute((MIGRATIONS_DIR / "0014_stored_response_items.sql").read_text())
    before = [await median_ms(lambda ref=ref: pool.fetch(BEFORE, "heavy", [ref])) for _, ref in lookups]
    sizes = [await index_size(pool, "stored_responses_items")]
    await pool.execute((MIGRATIONS_DIR / "0023_stored_item_ids.sql").read_text())
    store = ResponseStore(pool, 60)
    now = [await median_ms(lambda ref=ref: store.items("heavy", [ref])) for _, ref in lookups]
    sizes.append(await index_size(pool, "stored_responses_item_ids"))
    for (name, _), (was, found_then), (is_, found_now) in zip(lookups, before, now, strict=True):
        print(f"| {responses:,} | {name} | {was:.1f} ({found_then}) | {is_:.1f} ({found_now}) |")
    return sizes


async def index_size(pool: asyncpg.Pool, name: str) -> str:
    return str(await pool.fetchval(f"SELECT pg_size_pretty(pg_relation_size('{name}'))"))


async def main(sizes: list[int]) -> None:
    async with scratch_database(CommonSettings().postgres_dsn, "ferry_items_measure") as pool:
        await pool.execute("INSERT INTO tenants (id, retention_days) VALUES ('heavy', 30)")
        print("| stored responses | lookup | before: ms (found) | now: ms (found) |")
        print("| --- | --- | --- | --- |")
        for size in sizes:
            indexes = await measure(pool, size)
        print(f"\nat {sizes[-1]:,} responses of {ITEMS} items, the index: {indexes[0]} before, {indexes[1]} now")


if __name__ == "__main__":
    asyncio.run(main([int(n) for n in sys.argv[1:]] or [20_000, 200_000]))
