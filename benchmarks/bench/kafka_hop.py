"""One Kafka hop on this machine: the time from producing a record to a consumer reading it, and the producer's wait
for the broker's confirmation, with the producer and consumer settings the platform could use, side by side in one run.

``python -m benchmarks.bench.kafka_hop [--records 200] [--rounds 2]``: a private 3-partition topic, records keyed at
random (as request ids are), one every 20 ms; prints p50 / p90 / p99 per setting and deletes the topic."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.kafka import delete_topics, ensure_topics
from shared.settings import CommonSettings

SETTINGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "platform (acks=all, idempotent; fetch_max_wait_ms=500)": ({"acks": "all", "enable_idempotence": True}, {}),
    "acks=1, not idempotent": ({"acks": 1}, {}),
    "fetch_max_wait_ms=10": ({"acks": "all", "enable_idempotence": True}, {"fetch_max_wait_ms": 10}),
    "fetch_max_wait_ms=100": ({"acks": "all", "enable_idempotence": True}, {"fetch_max_wait_ms": 100}),
}


async def one_setting(
    common: CommonSettings, producer_options: dict[str, Any], consumer_options: dict[str, Any], records: int
) -> tuple[list[float], list[float]]:
    topic = f"{common.topic_prefix}hop-{uuid.uuid4().hex[:8]}"
    await ensure_topics(common, [topic], partitions=3)
    producer = AIOKafkaProducer(bootstrap_servers=common.kafka_bootstrap, **producer_options)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=common.kafka_bootstrap, group_id=None, auto_offset_reset="latest", **consumer_options
    )
    await producer.start()
    await consumer.start()
    delivered: list[float] = []
    confirmed: list[float] = []
    try:
        while not consumer.assignment():
            await asyncio.sleep(0.05)
        for tp in consumer.assignment():
            await consumer.position(tp)

        async def read() -> None:
            async for record in consumer:
                delivered.append(time.perf_counter() - json.loads(record.value)["sent"])
                if len(delivered) >= records:
                    return

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.5)
        for _ in range(records):
            sent = time.perf_counter()
            await producer.send_and_wait(topic, json.dumps({"sent": sent}).encode(), key=uuid.uuid4().hex.encode())
            confirmed.append(time.perf_counter() - sent)
            await asyncio.sleep(0.02)
        await asyncio.wait_for(reader, 30)
    finally:
        await producer.stop()
        await consumer.stop()
    return delivered, confirmed


def _ms(values: list[float]) -> str:
    p50, p90, p99 = np.percentile(np.asarray(values) * 1000, [50, 90, 99])
    return f"{p50:.2f} / {p90:.2f} / {p99:.2f}"


async def main_async(records: int, rounds: int) -> str:
    common = CommonSettings(topic_prefix=f"ferrybench-{uuid.uuid4().hex[:8]}.")
    lines = [
        f"{records} records per setting and round, {rounds} rounds, settings interleaved",
        "",
        "| setting | round | produce -> consumed p50 / p90 / p99 (ms) | broker confirmation p50 / p90 / p99 (ms) |",
        "| --- | --- | --- | --- |",
    ]
    try:
        for i in range(rounds):
            for name, (producer_options, consumer_options) in SETTINGS.items():
                delivered, confirmed = await one_setting(common, producer_options, consumer_options, records)
                lines.append(f"| {name} | {i + 1} | {_ms(delivered)} | {_ms(confirmed)} |")
    finally:
        await delete_topics(common)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench.kafka_hop", description=__doc__)
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    print(asyncio.run(main_async(args.records, args.rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
