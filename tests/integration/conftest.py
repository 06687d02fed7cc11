"""Batchers run as real processes against the real Kafka, each test on topics of its own. No workers: the tests read
the batch topic themselves and publish WorkerStatusReported (a public contract) to make load deterministic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.batcher.config import input_topic
from shared.contracts import (
    BatchFormed,
    ChatMessage,
    CompletionRequested,
    LoadedModel,
    Message,
    SamplingParams,
    WorkerStatusReported,
    reply_event_adapter,
)
from shared.kafka import delete_topics, ensure_topics
from shared.settings import CommonSettings
from tests.e2e.platform import ROOT, free_port

MODEL = "m1"


@dataclass
class BatcherProcess:
    port: int
    log: Path
    process: subprocess.Popen[bytes]

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a Prometheus series' samples whose labels include ``labels``."""
        total = 0.0
        for line in httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            head, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total


@dataclass
class Kafka:
    common: CommonSettings
    producer: AIOKafkaProducer
    workdir: Path
    batchers: list[BatcherProcess] = field(default_factory=list)
    reply_topic: str = ""

    @property
    def topics(self):  # noqa: ANN201
        return self.common.topics

    async def send(self, message: Message, topic: str, key: str) -> None:
        await self.producer.send_and_wait(topic, message.model_dump_json().encode(), key=key.encode())

    async def request(self, request_id: str, **fields: object) -> CompletionRequested:
        request = CompletionRequested(
            request_id=request_id,
            model=MODEL,
            reply_topic=self.reply_topic,
            messages=[ChatMessage(role="user", content="x" * 40)],
            sampling=SamplingParams(max_tokens=10),
            **fields,  # type: ignore[arg-type]
        )
        await self.send(request, input_topic(self.topics, MODEL), request_id)
        return request

    async def report_workers(self, running: int, max_running: int = 8, free_tokens: int = 100_000) -> None:
        status = WorkerStatusReported(
            worker_id="test-worker",
            models=[LoadedModel(model=MODEL, variant="fp32", state="ready")],
            running=running,
            waiting=0,
            max_running=max_running,
            kv_cache_free=0.5,
            free_tokens=free_tokens if running < max_running else 0,
            interval_seconds=1.0,
        )
        await self.send(status, self.topics.worker_status, "test-worker")

    @contextlib.asynccontextmanager
    async def workers(self, running: int, max_running: int = 8) -> AsyncIterator[None]:
        """Heartbeats of one worker with this load every 0.3 s while the block runs."""

        async def beat() -> None:
            while True:
                await self.report_workers(running, max_running)
                await asyncio.sleep(0.3)

        await self.report_workers(running, max_running)
        task = asyncio.create_task(beat())
        await asyncio.sleep(0.3)  # the batcher has read a report
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def start_batcher(self, name: str = "batcher", **env: str) -> BatcherProcess:
        port = free_port()
        log = self.workdir / f"{name}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "services.batcher.main"],
            cwd=ROOT,
            stdout=open(log, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "FERRY_TOPIC_PREFIX": self.common.topic_prefix,
                "FERRY_OTEL_EXPORTER": "none",
                "FERRY_BATCHER_MODELS": json.dumps([MODEL]),
                "FERRY_BATCHER_PORT": str(port),
                "FERRY_BATCHER_INSTANCE_ID": name,
                **env,
            },
        )
        batcher = BatcherProcess(port, log, process)
        self.batchers.append(batcher)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 204:
                    return batcher
            time.sleep(0.2)
        raise RuntimeError(f"{name} not healthy:\n{log.read_text()}")

    @contextlib.asynccontextmanager
    async def reader(self, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=self.common.kafka_bootstrap, group_id=None, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            yield consumer
        finally:
            await consumer.stop()

    async def batches(self, until: int = 0, seconds: float = 20, ids: set[str] = frozenset()) -> list[BatchFormed]:
        """Batches on the model's batch topic until they hold ``until`` requests and every one of ``ids`` (or time
        runs out)."""
        found: list[BatchFormed] = []

        def done() -> bool:
            seen = [r.request_id for b in found for r in b.requests]
            return len(seen) >= until and ids <= set(seen)

        async with self.reader(self.topics.batches(MODEL)) as consumer:
            deadline = time.monotonic() + seconds
            while not done() and time.monotonic() < deadline:
                polled = await consumer.getmany(timeout_ms=200)
                found += [BatchFormed.model_validate_json(r.value) for rs in polled.values() for r in rs]
        return found

    async def replies(self, until: int, seconds: float = 20) -> list[object]:
        found: list[object] = []
        async with self.reader(self.reply_topic) as consumer:
            deadline = time.monotonic() + seconds
            while len(found) < until and time.monotonic() < deadline:
                polled = await consumer.getmany(timeout_ms=200)
                found += [reply_event_adapter.validate_json(r.value) for rs in polled.values() for r in rs]
        return found


@pytest.fixture
async def kafka(tmp_path: Path) -> AsyncIterator[Kafka]:
    common = CommonSettings(topic_prefix=f"ferrytest-b{uuid.uuid4().hex[:8]}.", otel_exporter="none")
    topics = common.topics
    await ensure_topics(
        common,
        [
            input_topic(topics, MODEL),
            topics.batches(MODEL),
            topics.cancellations,
            topics.worker_status,
            topics.queue_status,
        ],
    )
    reply_topic = topics.replies("integration")
    await ensure_topics(common, [reply_topic, topics.dead_letter], partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=common.kafka_bootstrap, acks="all")
    await producer.start()
    kafka = Kafka(common, producer, tmp_path, reply_topic=reply_topic)
    try:
        yield kafka
    finally:
        await producer.stop()
        for b in kafka.batchers:
            if b.process.poll() is None:
                b.process.send_signal(signal.SIGTERM)
        for b in kafka.batchers:
            try:
                b.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                b.process.kill()
        await delete_topics(common)
