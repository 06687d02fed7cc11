"""A batch's results in the real PostgreSQL (a database of its own): written many at once, and read back a page at a
time, in line order, as the batch's finalization writes its output and error files from them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.ingress.adapters import BatchResult, BatchStore
from shared.db import scratch_database
from shared.settings import CommonSettings


@pytest.fixture
async def store() -> AsyncIterator[BatchStore]:
    async with scratch_database(CommonSettings().postgres_dsn, "ferry_test_batch_results") as pool:
        await pool.execute("INSERT INTO tenants (id, retention_days) VALUES ('t', 1)")
        await pool.execute("INSERT INTO batches (id, tenant_id, batch) VALUES ('b', 't', '{}'), ('other', 't', '{}')")
        yield BatchStore(pool)


async def read_all(store: BatchStore, batch_id: str, page: int) -> list[BatchResult]:
    read, after_line = [], 0
    while results := await store.results(batch_id, after_line, page):
        assert len(results) <= page
        read += results
        after_line = results[-1].line
    return read


async def test_results_are_read_a_page_at_a_time_in_line_order_each_once(store: BatchStore) -> None:
    lines = [7, 1, 25, 3, 12, 2, 9, 30, 4, 18, 5]  # as requests end: in no order
    await store.save_results("b", [BatchResult(line, line % 3 != 0, f'{{"line": {line}}}') for line in lines])
    await store.save_results("other", [BatchResult(1, True, '{"line": "other"}')])
    read = await read_all(store, "b", page=4)
    assert [(r.line, r.succeeded, r.result) for r in read] == [
        (line, line % 3 != 0, f'{{"line": {line}}}') for line in sorted(lines)
    ]
    # a line answered twice (run again after a takeover) keeps its first result
    await store.save_results("b", [BatchResult(7, False, '{"again": true}'), BatchResult(31, True, "{}")])
    again = {r.line: r.result for r in await read_all(store, "b", page=100)}
    assert again[7] == '{"line": 7}' and again[31] == "{}" and len(again) == len(lines) + 1
