"""A service's producer readied at start (shared.kafka.warm_up_producer), against the real Kafka: it learns the topics
it will publish to that exist, and creates none of those that do not."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from shared.kafka import DirectPublisher, broker_producer, delete_topics, ensure_topics, new_broker, warm_up_producer
from shared.settings import CommonSettings


async def test_the_producer_learns_the_topics_it_will_publish_to_and_creates_no_missing_one() -> None:
    common = CommonSettings(topic_prefix=f"ferrytest-w{uuid.uuid4().hex[:8]}.", otel_exporter="none")
    topics = common.topics
    present, missing = topics.requests("present"), topics.requests("missing")
    await ensure_topics(common, [present, topics.cancellations], partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=common.kafka_bootstrap)
    await producer.start()
    admin = AIOKafkaAdminClient(bootstrap_servers=common.kafka_bootstrap)
    await admin.start()
    try:
        readied = await warm_up_producer(producer, lambda t: t in {present, missing})

        assert readied == [present]  # the cancellations topic exists too, but was not asked for
        assert producer.client.cluster.partitions_for_topic(present) == {0, 1}  # its first record waits for nothing
        assert missing not in await admin.list_topics()  # asking for its metadata would have created it
        await producer.send_and_wait(present, b"{}", key=b"k")
    finally:
        await admin.close()
        await producer.stop()
        await delete_topics(common)


async def test_a_worker_readies_its_replies_for_the_reply_topics_that_exist() -> None:
    common = CommonSettings(topic_prefix=f"ferrytest-w{uuid.uuid4().hex[:8]}.", otel_exporter="none")
    topics = common.topics
    instances = [topics.replies("ingress-a"), topics.replies("ingress-b")]
    await ensure_topics(common, [*instances, topics.worker_status], partitions=1)
    replies = DirectPublisher(common, client_id="ferry-test-replies")
    await replies.start()
    try:
        assert await replies.warm_up(lambda t: t.startswith(topics.replies(""))) == instances
    finally:
        await replies.stop()
        await delete_topics(common)


async def test_the_services_find_the_producer_under_their_faststream_broker() -> None:
    common = CommonSettings(topic_prefix=f"ferrytest-w{uuid.uuid4().hex[:8]}.", otel_exporter="none")
    topic = common.topics.batches("present")
    await ensure_topics(common, [topic], partitions=1)
    broker = new_broker(common, "test", TracerProvider(), CollectorRegistry())
    await broker.start()
    try:
        # None would only log a warning and skip the warm-up: a FastStream that moved its producer shows here
        assert await warm_up_producer(broker_producer(broker), {topic}.__contains__) == [topic]
    finally:
        await broker.stop()
        await delete_topics(common)
