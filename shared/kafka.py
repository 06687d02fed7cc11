"""Kafka plumbing: brokers with tracing, topic creation, record headers, decoding with dead-lettering."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from aiokafka.structs import RecordMetadata
from faststream.kafka import KafkaBroker
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ValidationError

from shared.contracts import (
    CompletionRequested,
    Message,
    MessageDeadLettered,
    ModerationRequested,
    RequestId,
    TopicName,
)
from shared.settings import CommonSettings
from shared.telemetry import current_trace_context

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

UNWRITABLE_TOPIC_ERRORS = (UnknownTopicOrPartitionError, TopicAuthorizationFailedError, InvalidTopicError)
"""What publishing raises when its topic cannot take records (missing and not created by the brokers, not allowed, or
not a valid name). Publishing the same record again fails the same way, so a consumer that retries it stalls."""

_WHY_UNWRITABLE: dict[type[Exception], str] = {
    UnknownTopicOrPartitionError: "Kafka has no such topic and did not create it",
    TopicAuthorizationFailedError: "this service may not write to it",
    InvalidTopicError: "Kafka does not take it as a topic name",
}

TopicCheck = Callable[[str], Awaitable[None]]
"""Returns once Kafka's metadata holds a topic a requester named (its reply topic), or raises UnknownTopicOrPartition
after FERRY_REPLY_TOPIC_WAIT_S (see DirectPublisher.wait_for_topic): checked before publishing to it, since the
producer's own wait is its whole request timeout (40 s), and a consumer's other work waits with it."""

REQUEST_ID_HEADER = "ferry-request-id"
MESSAGE_TYPE_HEADER = "ferry-message-type"
SCHEMA_VERSION_HEADER = "ferry-schema-version"


PRODUCER_OPTIONS: dict[str, Any] = {"acks": "all", "enable_idempotence": False}
"""Every service producer's settings. acks=all: a record is confirmed once the broker has written it.

Not idempotent: aiokafka 0.14's idempotent producer holds a record it cannot deliver for ever, and when records
expired while the broker was away longer than its request timeout (40 s), the sequence numbers it gave them were
missing and the broker refused every later record of those partitions (OutOfOrderSequenceNumber) until the process
restarted. Seen here: a worker whose replies went through such a producer answered nothing after a 50 s broker
restart. Without it, a record the broker has not taken within the request timeout fails, and the consumer that made it
reads its input again (nothing is committed before its output is confirmed); a record retried after a broker error may
reach Kafka twice, which every reader already allows for: they drop repeats by request id, and within a stream by text
offset. Order is kept: aiokafka sends one request at a time to a broker."""


def back_off_failed_metadata_updates() -> None:
    """Makes every aiokafka client in this process wait its retry backoff (100 ms by default) after a metadata update
    that reached no broker, before it reports the failure. Called once at start-up (``shared.runtime.run``).

    aiokafka 0.14 does not wait: while the broker is down, a producer holding records for a partition whose leader it
    no longer knows asks for an update in a loop, and each attempt fails at once (connection refused). Measured here: a
    worker streaming replies when the broker stopped spun a whole core and logged about 17,000 error lines a second,
    until the broker was back."""
    update = AIOKafkaClient._metadata_update
    if getattr(update, "backs_off", False):
        return

    async def metadata_update_with_backoff(self: AIOKafkaClient, cluster_metadata: Any, topics: Any) -> bool:
        updated: bool = await update(self, cluster_metadata, topics)
        if not updated:
            await asyncio.sleep(self._retry_backoff)
        return updated

    metadata_update_with_backoff.backs_off = True  # type: ignore[attr-defined]
    AIOKafkaClient._metadata_update = metadata_update_with_backoff  # type: ignore[method-assign]


def new_broker(
    settings: CommonSettings, service: str, tracer_provider: TracerProvider, metrics: CollectorRegistry
) -> KafkaBroker:
    """A FastStream broker whose publishes and consumes are traced (W3C context travels in record headers) and counted
    in ``metrics`` (FastStream's faststream_* series, labelled app_name=ferry-<service>)."""
    return KafkaBroker(
        settings.kafka_bootstrap,
        client_id=f"ferry-{service}",
        # not under "faststream": that logger prints in colour and does not propagate
        logger=logging.getLogger("shared.kafka.broker"),
        middlewares=[
            KafkaTelemetryMiddleware(tracer_provider=tracer_provider),
            KafkaPrometheusMiddleware(registry=metrics, app_name=f"ferry-{service}"),
        ],
        **PRODUCER_OPTIONS,
    )


def broker_producer(broker: KafkaBroker) -> AIOKafkaProducer | None:
    """The aiokafka producer under a started FastStream broker, or None where it is not found: FastStream 0.6 gives no
    public handle on it, and a FastStream that keeps it elsewhere should cost a warm-up, not a service's start."""
    state = getattr(getattr(broker.config, "producer", None), "_producer", None)
    producer = getattr(state, "producer", None)
    return producer if isinstance(producer, AIOKafkaProducer) else None


async def warm_up_producer(
    producer: AIOKafkaProducer | None, publishes_to: Callable[[str], bool], timeout_s: float = 5.0
) -> list[str]:
    """Fetches the metadata of the topics a service will publish to and connects to their leaders, before its first
    record: otherwise that record waits for both (a new producer's first record took 5-10 ms more than its next ones,
    measured here). ``publishes_to`` picks them among the topics Kafka holds now; one that does not exist yet is left
    alone, since asking for its metadata would have the brokers create it with their defaults. Best effort: what is not
    done within ``timeout_s`` is left to the first record, which waits as before. Returns the topics it readied."""
    readied: list[str] = []
    if producer is None:
        logger.warning("no producer warm-up: FastStream's producer not found (see broker_producer)")
        return readied
    try:
        async with asyncio.timeout(timeout_s):
            cluster = await producer.client.fetch_all_metadata()
            for topic in sorted(t for t in cluster.topics() if publishes_to(t)):
                for partition in await producer.partitions_for(topic):
                    leader = producer.client.cluster.leader_for_partition(TopicPartition(topic, partition))
                    if leader is not None and leader >= 0:
                        await producer.client.ready(leader)  # at once when connected already
                readied.append(topic)
    except (TimeoutError, KafkaError) as exc:
        logger.info("producer warm-up stopped after %d topic(s): %r", len(readied), exc)
    return readied


def message_headers(message: Message, request_id: str | None = None) -> dict[str, str]:
    """Headers every record carries: its content type (JSON), message type and schema version, and the request it
    concerns."""
    headers = {
        "content-type": "application/json",
        MESSAGE_TYPE_HEADER: type(message).__name__,
        SCHEMA_VERSION_HEADER: str(message.schema_version),
    }
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    return headers


async def publish_message(
    broker: KafkaBroker,
    message: Message,
    topic: str,
    key: str | None,
    request_id: str | None = None,
    confirm: bool = True,
) -> asyncio.Future[RecordMetadata] | None:
    """Publishes a contract message as JSON with the platform's headers (the tracing middleware adds trace context).
    With ``confirm=False`` it returns once the record is queued in the producer, without waiting for the broker: the
    producer keeps records of one key in order, so confirming a later record confirms the earlier ones too. It then
    returns the broker's confirmation to await later, so a handler publishing several records pays one round trip,
    not one per record, before it lets its input be committed."""
    sent = await broker.publish(
        message.model_dump_json().encode(),
        topic,
        key=key.encode() if key is not None else None,
        headers=message_headers(message, request_id),
        no_confirm=not confirm,
    )
    return None if confirm else sent  # type: ignore[return-value]


class DirectPublisher:
    """Publishes contract messages as ``publish_message`` does, but on a plain aiokafka producer, outside FastStream's
    tracing and metrics middlewares: for the per-token path, where a span and a metrics update per record cost more
    than the record (in a worker at 16 streams, about 15% of its main thread's samples were in those middlewares).
    Records carry the same headers plus the current trace context, so a reader still joins the request's trace. One
    instance publishes every record of a key, so they stay in order. A service that publishes with its broker keeps
    one only for ``wait_for_topic`` (its TopicCheck)."""

    def __init__(self, settings: CommonSettings, client_id: str) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, client_id=client_id, **PRODUCER_OPTIONS
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()  # sends what is still queued first

    async def warm_up(self, publishes_to: Callable[[str], bool]) -> list[str]:
        """See ``warm_up_producer``."""
        return await warm_up_producer(self._producer, publishes_to)

    async def wait_for_topic(self, topic: str, timeout_s: float) -> None:
        """Returns once Kafka's metadata holds ``topic``: at once when the producer knows it, within a round trip or
        two when the brokers create it on first use. Raises UnknownTopicOrPartitionError after ``timeout_s`` (the
        producer's own wait is its whole request timeout, 40 s), or the topic's own error at once."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._producer.partitions_for(topic)
        except TimeoutError:
            raise UnknownTopicOrPartitionError(f"not in Kafka's metadata after {timeout_s:g} s") from None

    async def publish(
        self, message: Message, topic: str, key: str, request_id: str | None = None, confirm: bool = True
    ) -> asyncio.Future[RecordMetadata] | None:
        """Like ``publish_message``: with ``confirm=False`` it returns the broker's confirmation to await later."""
        headers = message_headers(message, request_id) | current_trace_context()
        sent = await self._producer.send(
            topic,
            message.model_dump_json().encode(),
            key=key.encode(),
            headers=[(k, v.encode()) for k, v in headers.items()],
        )
        if confirm:
            await sent
            return None
        return sent


def record_headers(record: ConsumerRecord) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in (record.headers or ())}


async def ensure_topics(settings: CommonSettings, names: Iterable[str], partitions: int | None = None) -> None:
    """Creates the topics that do not exist yet (idempotent; safe when several services race)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="ferry-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, num_partitions=partitions or settings.topic_partitions, replication_factor=1)
            for name in sorted(set(names) - existing)
        ]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
            logger.info("created topics %s", [t.name for t in wanted])
    finally:
        await admin.close()


async def topic_partitions(settings: CommonSettings, topic: str) -> list[int]:
    """The partitions of an existing topic, from the brokers. A consumer that has just started knows none (it fetches
    metadata for the topics it subscribes to, and assigning comes before that), so reading them from it gave only
    partition 0 of a topic that had several."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="ferry-admin")
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] or not described["partitions"]:
        raise UnknownTopicOrPartitionError(f"{topic}: no partitions in Kafka's metadata")
    return sorted(p["partition"] for p in described["partitions"])


async def tail(settings: CommonSettings, topic: str, client_id: str) -> AIOKafkaConsumer:
    """A started consumer of every partition of ``topic`` (created with one if missing, whatever number it has if
    not), without a group and positioned at the end before it returns: a reader of its own reply topic sees every
    reply to what it sends afterwards."""
    await ensure_topics(settings, [topic], partitions=1)
    partitions = await topic_partitions(settings, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        client_id=client_id,
        auto_offset_reset="latest",
    )
    await consumer.start()
    assigned = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(assigned)
    await consumer.seek_to_end(*assigned)
    for tp in assigned:
        await consumer.position(tp)  # resolves the end now, not at the first fetch
    return consumer


async def delete_topics(settings: CommonSettings) -> list[str]:
    """Deletes every topic whose name starts with the settings' topic prefix (a test run's or a benchmark's private
    topics); returns their names."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="ferry-admin")
    await admin.start()
    try:
        ours = sorted(t for t in await admin.list_topics() if t.startswith(settings.topic_prefix))
        if ours:
            await admin.delete_topics(ours)
        return ours
    finally:
        await admin.close()


async def wait_for_kafka(settings: CommonSettings, seconds: float = 60) -> None:
    """Start-up step: waits until the cluster answers, so services can start in any order."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="ferry-prestart")
        try:
            await admin.start()
            await admin.list_topics()
            return
        except KafkaConnectionError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.5)
        finally:
            await admin.close()


class Rejected(Exception):
    """A record that can never be processed; it belongs on the dead-letter topic with this reason."""

    def __init__(self, reason: str, param: str | None = None) -> None:
        super().__init__(reason)
        self.param = param
        """The field at fault (dotted, e.g. sampling.logprobs), when one is."""


def decode(model: type[M], record: ConsumerRecord) -> M:
    """Parses a record's JSON value into ``model`` or raises Rejected with a readable reason."""
    if not record.value:
        raise Rejected("empty record value")
    try:
        return model.model_validate_json(record.value)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in errors)
        param = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
        raise Rejected(f"invalid {model.__name__}: {problems}", param or None) from None


class _Requester(BaseModel):
    """The two fields of a request record that say whom to answer, with the contract's own constraints."""

    request_id: RequestId
    reply_topic: TopicName


def requester_of(record: ConsumerRecord) -> tuple[str, str] | None:
    """The request id and reply topic of a request record that was rejected, when it holds usable ones: its requester
    can then be told why at once, rather than wait for an answer that will not come."""
    try:
        requester = _Requester.model_validate_json(record.value or b"")
    except ValidationError:
        return None
    return requester.request_id, requester.reply_topic


async def dead_letter(
    broker: KafkaBroker, settings: CommonSettings, record: ConsumerRecord, reason: str, service: str
) -> None:
    """Parks a record on the dead-letter topic; the consumer then moves on."""
    parked = MessageDeadLettered(
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key.decode("utf-8", "replace") if isinstance(record.key, bytes) else record.key,
        payload=(record.value or b"").decode("utf-8", "replace"),
        reason=reason,
        service=service,
    )
    await _park(broker, settings, parked)


async def dead_letter_unanswerable(
    broker: KafkaBroker,
    settings: CommonSettings,
    request: CompletionRequested | ModerationRequested,
    source: tuple[str, int, int],
    error: Exception,
    service: str,
) -> None:
    """Parks a request whose replies cannot be published to its reply topic (``error`` is one of
    UNWRITABLE_TOPIC_ERRORS), read from ``source`` (topic, partition, offset): its requester cannot be told, an
    operator reading the dead-letter topic can, and the consumer moves on instead of retrying it for ever."""
    topic, partition, offset = source
    why = _WHY_UNWRITABLE.get(type(error), type(error).__name__) + (f" ({error.args[0]})" if error.args else "")
    parked = MessageDeadLettered(
        source_topic=topic,
        partition=partition,
        offset=offset,
        key=request.request_id,
        payload=request.model_dump_json(),
        reason=f"its reply topic {request.reply_topic!r} cannot be written: {why}; the requester cannot be answered",
        service=service,
    )
    await _park(broker, settings, parked)


async def _park(broker: KafkaBroker, settings: CommonSettings, parked: MessageDeadLettered) -> None:
    await publish_message(broker, parked, settings.topics.dead_letter, key=parked.key)
    logger.warning("dead-lettered %s[%d]@%d: %s", parked.source_topic, parked.partition, parked.offset, parked.reason)
