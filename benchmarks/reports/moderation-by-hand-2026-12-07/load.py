"""200 moderations at once beside 20 chats, then 20 one at a time, against `./infra/platform up` (see README.md)."""

import asyncio
import random
import time
from pathlib import Path

import httpx

KEY = (Path(__file__).resolve().parents[3] / ".state" / "dev-api-key").read_text().strip()
HEADERS = {"authorization": f"Bearer {KEY}"}
WORDS = "the a picnic knife love hate people park drive dog cat kill sun rain tree money bank".split()


async def moderation(client: httpx.AsyncClient) -> float:
    texts = [" ".join(random.choices(WORDS, k=random.randint(5, 60))) for _ in range(random.randint(1, 5))]
    started = time.perf_counter()
    answered = await client.post("/v1/moderations", json={"input": texts}, headers=HEADERS)
    assert answered.status_code == 200, answered.text
    assert len(answered.json()["results"]) == len(texts)
    return time.perf_counter() - started


async def chat(client: httpx.AsyncClient) -> None:
    body = {"model": "tiny-random", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    answered = await client.post("/v1/chat/completions", json=body, headers=HEADERS)
    assert answered.status_code == 200, answered.text


async def main() -> None:
    async with httpx.AsyncClient(base_url="http://127.0.0.1:8000", timeout=60) as client:
        await moderation(client)
        started = time.perf_counter()
        together = await asyncio.gather(*[moderation(client) for _ in range(200)], *[chat(client) for _ in range(20)])
        took = sorted(t for t in together if t is not None)
        print(
            f"200 moderations + 20 chats in {time.perf_counter() - started:.1f}s; moderation p50 "
            f"{took[len(took) // 2] * 1000:.0f} ms p99 {took[int(len(took) * 0.99)] * 1000:.0f} ms"
        )
        alone = sorted([await moderation(client) for _ in range(20)])
        print(f"sequential: p50 {alone[10] * 1000:.1f} ms")


asyncio.run(main())
