"""Internal systems talk to the platform through Kafka alone: produce a request, read the reply on their own topic.
The request is written as plain JSON, as a non-Python producer would, to hold the documented format to its word."""

from __future__ import annotations

import asyncio
import json
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.e2e.platform import TINY_MODEL, Platform


async def read_until_final(consumer: AIOKafkaConsumer, request_id: str, seconds: float = 60) -> list[dict]:
    events: list[dict] = []
    async with asyncio.timeout(seconds):
        async for record in consumer:
            event = json.loads(record.value)
            if event.get("request_id") != request_id:
                continue
            events.append(event)
            if event["event"] in ("completion_finished", "generation_failed"):
                return events
    return events


async def test_request_produced_to_kafka_gets_its_completion_on_its_own_reply_topic(platform: Platform) -> None:
    topics = platform.common.topics
    reply_topic = topics.replies(f"billing-system-{uuid.uuid4().hex[:6]}")
    request_id = f"billing-{uuid.uuid4().hex}"
    request = {
        "schema_version": 1,
        "request_id": request_id,
        "model": TINY_MODEL,
        "messages": [{"role": "user", "content": "Summarise invoice 42."}],
        "sampling": {"max_tokens": 12, "temperature": 0},
        "stream": True,
        "reply_topic": reply_topic,
    }
    bootstrap = platform.common.kafka_bootstrap
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:  # as documented: the requester owns its reply topic and creates it first
        await admin.create_topics([NewTopic(reply_topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(reply_topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await producer.start()
    await consumer.start()
    try:
        await producer.send_and_wait(topics.requests(TINY_MODEL), json.dumps(request).encode(), key=request_id.encode())
        events = await read_until_final(consumer, request_id)
    finally:
        await producer.stop()
        await consumer.stop()

    assert events, "no reply arrived"
    final = events[-1]
    assert final["event"] == "completion_finished", final
    deltas = [e for e in events if e["event"] == "tokens_generated"]
    assert [e["sequence"] for e in events] == list(range(len(events)))
    assert "".join(d["text"] for d in deltas) == final["text"]
    assert final["usage"]["completion_tokens"] == sum(d["token_count"] for d in deltas) > 0
    assert final["usage"]["total_tokens"] == final["usage"]["prompt_tokens"] + final["usage"]["completion_tokens"]
