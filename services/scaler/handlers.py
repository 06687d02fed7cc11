"""Kafka edge of the scaler: batcher queue reports and worker heartbeats in (every scaler instance reads all of them,
no consumer group), worker-control commands out."""

from __future__ import annotations

from dataclasses import dataclass

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.scaler.signals import StatusBoard
from shared.contracts import Message, QueueDepthReported, WorkerStatusReported
from shared.kafka import Rejected, dead_letter, decode, publish_message
from shared.settings import CommonSettings

SERVICE = "scaler"


@dataclass(frozen=True)
class HandlerDeps:
    common: CommonSettings
    broker: KafkaBroker
    board: StatusBoard


def register(deps: HandlerDeps) -> None:
    broker, common, topics = deps.broker, deps.common, deps.common.topics

    # No group: each scaler sees every report; only the newest matter, so start at the end and never commit.
    @broker.subscriber(topics.queue_status, auto_offset_reset="latest", ack_policy=AckPolicy.ACK_FIRST)
    async def on_queue_status(message: KafkaMessage) -> None:
        try:
            deps.board.queue(decode(QueueDepthReported, message.raw_message))
        except Rejected as exc:
            await dead_letter(broker, common, message.raw_message, str(exc), SERVICE)

    @broker.subscriber(topics.worker_status, auto_offset_reset="latest", ack_policy=AckPolicy.ACK_FIRST)
    async def on_worker_status(message: KafkaMessage) -> None:
        try:
            deps.board.worker(decode(WorkerStatusReported, message.raw_message))
        except Rejected as exc:
            await dead_letter(broker, common, message.raw_message, str(exc), SERVICE)


def publisher(broker: KafkaBroker):  # noqa: ANN201
    async def to_topic(message: Message, topic: str, key: str) -> None:
        await publish_message(broker, message, topic, key=key)

    return to_topic
