"""What a chain of stored responses costs (each turn continues the last with previous_response_id, as an agent loop
does): the bytes the stored responses take, the time to store the whole chain, and the time to read its last response
back (what a request continuing it, GET and input_items do first), with the ResponseStore and migrations of a git
revision (before) and of the working tree (after), alternating, each on a database of its own. A turn is a user message
of about 60 words and an answer of about 250, of words drawn at random (text that compresses as prose does, not as a
repeated string).

    PYTHONPATH=. python benchmarks/reports/response-chains-2026-12-07/measure.py BEFORE_REVISION [TURNS ...]
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from benchmarks.revisions import module_and_migrations
from services.ingress import adapters as after
from shared.db import MIGRATIONS_DIR, scratch_database
from shared.settings import CommonSettings

READS = 15
WORDS = [f"w{n:x}" for n in range(4000)]


def message(role: str, item_id: str, words: int, rng: random.Random) -> dict[str, object]:
    kind = "input_text" if role == "user" else "output_text"
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return {"id": item_id, "type": "message", "role": role, "content": [{"type": kind, "text": text}]}


async def chain(store: ModuleType, migrations: Path, turns: int) -> dict[str, float]:
    rng = random.Random(7)  # the same text on both sides
    async with scratch_database(CommonSettings().postgres_dsn, "ferry_response_chains", migrations) as pool:
        await pool.execute("INSERT INTO tenants (id, retention_days) VALUES ('acme', 30)")
        responses = store.ResponseStore(pool, timeout_s=60.0)
        conversation: list[dict[str, object]] = []
        previous = None
        began = time.perf_counter()
        for turn in range(turns):
            asked = message("user", f"msg_in_{turn}", 60, rng)
            answered = message("assistant", f"msg_out_{turn}", 250, rng)
            conversation = [*conversation, asked, answered]
            response = {"id": f"resp_{turn}", "status": "completed", "previous_response_id": previous}
            response["output"] = [answered]
            assert await responses.save("acme", f"resp_{turn}", store.StoredResponse(conversation, response))
            previous = f"resp_{turn}"
        stored_s = time.perf_counter() - began
        reads = []
        for _ in range(READS):
            began = time.perf_counter()
            last = await responses.load("acme", previous)
            reads.append(time.perf_counter() - began)
            assert last is not None and last.conversation == conversation
        size = await pool.fetchval(
            "SELECT pg_total_relation_size('stored_responses')"
            " + coalesce(pg_total_relation_size(to_regclass('response_threads')), 0)"
        )
    return {"mib": size / 2**20, "store_s": stored_s, "read_ms": statistics.median(reads) * 1000}


async def main(rev: str, turn_counts: list[int]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        before, before_migrations = module_and_migrations(rev, "services/ingress/adapters.py", Path(scratch))
        sides = {"before": (before, before_migrations), "after": (after, MIGRATIONS_DIR)}
        print(f"before: {rev}; after: the working tree\n")
        print(
            "| turns | stored, before / after (MiB) | whole chain stored, before / after (s) |"
            " last response read, before / after (ms, median of 15) |"
        )
        print("| --- | --- | --- | --- |")
        for n, turns in enumerate(turn_counts):
            order = ["before", "after"] if n % 2 == 0 else ["after", "before"]
            got = {side: await chain(*sides[side], turns) for side in order}
            b, a = got["before"], got["after"]
            print(
                f"| {turns} | {b['mib']:.1f} / {a['mib']:.1f} ({b['mib'] / a['mib']:.0f}x) |"
                f" {b['store_s']:.2f} / {a['store_s']:.2f} | {b['read_ms']:.1f} / {a['read_ms']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], [int(t) for t in sys.argv[2:]] or [50, 200, 500]))
