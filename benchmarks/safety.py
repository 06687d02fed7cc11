"""Added latency of prompt screening, printed as a report: ``python -m benchmarks.safety [--n 300] [--kafka]``.

1. In-process: the time to screen one prompt (rules, guardify, MiniLM embedding classifier, policy decision), per
   classifier and combined, over the labeled set's prompts (one prompt per call, as the stage sees them at low load).
2. ``--kafka`` (needs Kafka and PostgreSQL running, e.g. ``infra/platform infra``): the real added hop. The safety
   service runs in this process on a throw-away topic prefix and database; requests are produced one at a time and
   timed until they come out of ``screened.<model>``, alternating with a plain produce-consume on a bare topic (the
   cost of any Kafka hop). Added latency = stage p50/p99 - bare hop p50/p99, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

GOAL_P50_MS = 15.0


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def line(name: str, ms: Sequence[float]) -> str:
    return f"| {name} | {pct(ms, 50):.2f} | {pct(ms, 99):.2f} | {statistics.fmean(ms):.2f} | {len(ms)} |"


async def in_process(n: int) -> list[str]:
    from services.safety.classifiers import EmbeddingClassifier, InjectionClassifier, load_embedder
    from services.safety.labels import load_labeled
    from services.safety.policy import DEFAULT_POLICY, decide
    from services.safety.screening import Screener

    texts = [e.text for e in load_labeled()]
    prompts = [texts[i % len(texts)] for i in range(n)]
    injection = InjectionClassifier()
    embedding = EmbeddingClassifier.trained(load_embedder())
    screeners = {
        "rules only": Screener(),
        "rules + guardify": Screener([injection]),
        "rules + embedding": Screener([embedding]),
        "all (the stage's default)": Screener([injection, embedding]),
    }
    for s in screeners.values():  # warm-up
        await s.screen(prompts[:5])
    timings: dict[str, list[float]] = {k: [] for k in screeners}
    for p in prompts:  # interleaved, so machine noise hits every configuration alike
        for name, screener in screeners.items():
            t = time.perf_counter()
            (screening,) = await screener.screen([p])
            decide(screening.scores, DEFAULT_POLICY.prompt)
            timings[name].append((time.perf_counter() - t) * 1000)
    out = [
        "## Screening one prompt in-process (ms)",
        "",
        "| classifiers | p50 | p99 | mean | n |",
        "| --- | --- | --- | --- | --- |",
    ]
    out += [line(name, ms) for name, ms in timings.items()]
    p50 = pct(timings["all (the stage's default)"], 50)
    verdict = "meets" if p50 < GOAL_P50_MS else "misses"
    out += ["", f"Default stage: p50 {p50:.2f} ms, {verdict} the goal of < {GOAL_P50_MS:.0f} ms p50."]
    return out


async def through_kafka(n: int) -> list[str]:
    import asyncpg
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from services.safety.config import SafetySettings
    from services.safety.main import build_app
    from shared.db import connect_pool, migrate
    from shared.kafka import delete_topics, ensure_topics
    from shared.settings import CommonSettings

    base = CommonSettings()
    run = uuid.uuid4().hex[:8]
    database = f"ferry_bench_{run}"
    admin_conn = await asyncpg.connect(base.postgres_dsn)
    await admin_conn.execute(f'CREATE DATABASE "{database}"')
    common = CommonSettings(
        topic_prefix=f"bench-{run}.",
        postgres_dsn=base.postgres_dsn.rsplit("/", 1)[0] + "/" + database,
        otel_exporter="none",
    )
    model = "tiny-random"
    topics = common.topics
    bare = f"{common.topic_prefix}bare"
    stage_ms: list[float] = []
    bare_ms: list[float] = []
    held = 0
    try:
        pool = await connect_pool(common.postgres_dsn)
        await migrate(pool)
        await pool.close()
        await ensure_topics(common, [topics.requests(model), topics.screened(model), bare], partitions=1)
        app = build_app(SafetySettings(models=[model]), common)
        async with app.router.lifespan_context(app):
            producer = AIOKafkaProducer(bootstrap_servers=common.kafka_bootstrap, linger_ms=0)
            screened = AIOKafkaConsumer(
                topics.screened(model),
                bootstrap_servers=common.kafka_bootstrap,
                auto_offset_reset="latest",
                fetch_max_wait_ms=1,
            )
            plain = AIOKafkaConsumer(
                bare, bootstrap_servers=common.kafka_bootstrap, auto_offset_reset="latest", fetch_max_wait_ms=1
            )
            await producer.start()
            await screened.start()
            await plain.start()
            await asyncio.sleep(2)  # the stage's consumer group settles
            try:
                from services.safety.labels import load_labeled

                texts = [e.text for e in load_labeled() if not e.categories]  # allowed prompts reach screened
                for i in range(n + 5):
                    rid = f"bench-{i}"
                    body = json.dumps(
                        {
                            "request_id": rid,
                            "model": model,
                            "reply_topic": topics.replies("bench"),
                            "messages": [{"role": "user", "content": texts[i % len(texts)]}],
                        }
                    ).encode()
                    t = time.perf_counter()
                    await producer.send_and_wait(topics.requests(model), body, key=rid.encode())
                    try:
                        await asyncio.wait_for(screened.getone(), 10)
                    except TimeoutError:  # the default policy held it (the labeled "safe" set has borderline texts)
                        held += 1
                        continue
                    stage = (time.perf_counter() - t) * 1000
                    t = time.perf_counter()
                    await producer.send_and_wait(bare, body, key=rid.encode())
                    await plain.getone()
                    hop = (time.perf_counter() - t) * 1000
                    if i >= 5:  # warm-up
                        stage_ms.append(stage)
                        bare_ms.append(hop)
            finally:
                await producer.stop()
                await screened.stop()
                await plain.stop()
    finally:
        await delete_topics(common)
        await admin_conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin_conn.close()
    added50, added99 = pct(stage_ms, 50) - pct(bare_ms, 50), pct(stage_ms, 99) - pct(bare_ms, 99)
    return [
        "## On the request path: through the safety stage vs a bare Kafka hop (ms)",
        "",
        "| path | p50 | p99 | mean | n |",
        "| --- | --- | --- | --- | --- |",
        line("produce -> safety stage -> screened topic", stage_ms),
        line("produce -> bare topic (any hop)", bare_ms),
        "",
        f"Added by the stage: p50 {added50:.2f} ms, p99 {added99:.2f} ms "
        f"({'meets' if added50 < GOAL_P50_MS else 'misses'} the goal of < {GOAL_P50_MS:.0f} ms p50).",
        f"Prompts the default policy held (not timed): {held}.",
    ]


async def main_async(args: argparse.Namespace) -> str:
    out = ["# Safety: added latency of prompt screening", "", f"{os.cpu_count()} CPUs, shared machine.", ""]
    out += await in_process(args.n)
    if args.kafka:
        out += [""] + await through_kafka(args.n)
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Added latency of prompt screening (p50/p99)")
    parser.add_argument("--n", type=int, default=300, help="prompts per configuration")
    parser.add_argument("--kafka", action="store_true", help="also measure the stage on real Kafka")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    args = parser.parse_args()
    text = asyncio.run(main_async(args))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
