"""A reader of its own reply topic (shared.kafka.tail: the ingress's replies, the safety stage's guard answers),
against the real Kafka."""

from __future__ import annotations

import time
import uuid

from aiokafka import AIOKafkaProducer

from shared.kafka import delete_topics, ensure_topics, tail
from shared.settings import CommonSettings


async def test_a_reply_topic_made_with_several_partitions_is_read_on_every_one() -> None:
    common = CommonSettings(topic_prefix=f"ferrytest-t{uuid.uuid4().hex[:8]}.", otel_exporter="none")
    topic = common.topics.replies("ingress-made-elsewhere")
    await ensure_topics(common, [topic], partitions=3)  # made before its reader, by an operator or the brokers
    consumer = await tail(common, topic, "ferry-test-tail")
    producer = AIOKafkaProducer(bootstrap_servers=common.kafka_bootstrap)
    await producer.start()
    try:
        for partition in range(3):  # a worker's replies land where their request id's key hashes to
            await producer.send_and_wait(topic, f"reply {partition}".encode(), partition=partition)
        read: set[bytes] = set()
        deadline = time.monotonic() + 20
        while len(read) < 3 and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                read |= {record.value for record in records}
        assert read == {b"reply 0", b"reply 1", b"reply 2"}
    finally:
        await producer.stop()
        await consumer.stop()
        await delete_topics(common)
