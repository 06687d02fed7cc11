"""Reading a finished batch's results to write its output file, on a database of its own: in one query (as the
finalization did before 7 December, under the 2 s timeout of the lookups that serve requests) and a page of
adapters.RESULTS_PAGE at a time (as it does now), side by side in one run, with the memory each held at its peak.
Each result is about 2 KB, as a chat completion's output line with a few hundred tokens is.

    PYTHONPATH=. python benchmarks/reports/batch-results-2026-12-07/measure.py [RESULTS[xWORDS] ...]

RESULTS: how many results (10000 and 50000 by default); WORDS: each answer's words (360 by default, about 2 KB).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import tracemalloc

import asyncpg

from services.ingress.adapters import BatchResult, BatchStore
from shared.db import scratch_database
from shared.settings import CommonSettings


def result_line(line: int, words: int) -> str:
    answer = {"choices": [{"message": {"role": "assistant", "content": "word " * words}}], "usage": {}}
    return json.dumps({"id": f"batch_req_{line}", "custom_id": f"r{line}", "response": {"body": answer}})


async def whole(pool: asyncpg.Pool, batch_id: str) -> bytes:
    """The finalization before: every result in one query, then the file's text joined, then encoded."""
    rows = await pool.fetch(
        "SELECT line, succeeded, result FROM batch_results WHERE batch_id = $1 ORDER BY line", batch_id
    )
    results = [BatchResult(row["line"], row["succeeded"], row["result"]) for row in rows]
    return "".join(f"{r.result}\n" for r in results if r.succeeded).encode()


async def paged(store: BatchStore, batch_id: str) -> bytearray:
    """The finalization now (batches.BatchRunner._finalize)."""
    content, after_line = bytearray(), 0
    while page := await store.results(batch_id, after_line):
        for result in page:
            if result.succeeded:
                content += f"{result.result}\n".encode()
        after_line = page[-1].line
    return content


async def measure(count: int, words: int) -> str:
    async with scratch_database(CommonSettings().postgres_dsn, "ferry_batch_results") as pool:
        await pool.execute("INSERT INTO tenants (id, retention_days) VALUES ('t', 30)")
        await pool.execute("INSERT INTO batches (id, tenant_id, batch, finisher) VALUES ('b', 't', '{}', 'x')")
        store = BatchStore(pool, timeout_s=600)
        for first in range(1, count + 1, 1000):
            lines = range(first, min(first + 1000, count + 1))
            page = [BatchResult(line, True, result_line(line, words)) for line in lines]
            await store.save_results("b", page)
        await pool.execute("VACUUM ANALYZE batch_results")
        row = [f"| {count:,} x {words} words |"]
        sizes = []
        for read in (lambda: whole(pool, "b"), lambda: paged(store, "b")):
            tracemalloc.start()
            began = time.perf_counter()
            content = await read()
            took = time.perf_counter() - began
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            sizes.append(len(content))
            row.append(f" {took:.2f} | {peak / 2**20:.0f} |")
            del content
        assert sizes[0] == sizes[1]
        return f"{''.join(row)} {sizes[0] / 2**20:.0f} |"


async def main() -> None:
    runs = [(int(n), int(words or 360)) for n, _, words in (arg.partition("x") for arg in sys.argv[1:])]
    print("| results | one query (s) | its peak (MiB) | pages (s) | their peak (MiB) | output file (MiB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for count, words in runs or [(10_000, 360), (50_000, 360)]:
        print(await measure(count, words), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
