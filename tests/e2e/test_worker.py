"""The worker through its Kafka interface, with real Kafka and vLLM (tiny model): batches in, replies out. Its own topic
prefix, database and workers (no batcher, no ingress), so workers can be killed without disturbing other tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from transformers import AutoTokenizer

from shared.contracts import (
    BatchFormed,
    CompletionRequested,
    RequestCancelled,
    SamplingParams,
    WorkerStatusReported,
    utc_now,
)
from shared.kafka import delete_topics
from shared.settings import CommonSettings, consumer_group
from tests.e2e.platform import (
    MODELS_DIR,
    ROOT,
    TINY_MODEL,
    Service,
    _create_database,
    _drop_database,
    _dsn,
    _wait_healthy,
    free_port,
)
from tests.e2e.test_operations import metric_total

FINAL = ("completion_finished", "generation_failed")
WARM_ABOVE = 20  # requests per hour, for the workers of this module


@dataclass
class Workers:
    common: CommonSettings
    env: dict[str, str]
    workdir: Path
    models_dir: Path
    started: list[Service] = field(default_factory=list)

    def start(self, name: str, **env: str) -> Service:
        port = free_port()
        service = Service(
            name,
            "services.worker.main",
            port,
            {
                "FERRY_WORKER_MODEL": TINY_MODEL,
                "FERRY_WORKER_PORT": str(port),
                "FERRY_WORKER_MODELS_DIR": str(self.models_dir),
                "FERRY_WORKER_STATUS_INTERVAL_S": "1",
                **env,
            },
        )
        log = open(self.workdir / f"{name}.log", "ab")
        service.process = subprocess.Popen(
            [sys.executable, "-m", service.module],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.env | service.env,
        )
        self.started.append(service)
        _wait_healthy(service, self.workdir, time.monotonic() + 180)
        return service

    def kill(self, service: Service) -> None:
        """kill -9 of the worker and its vLLM EngineCore child."""
        assert service.process is not None
        os.killpg(service.process.pid, signal.SIGKILL)

    def terminate(self, service: Service) -> None:
        """SIGTERM to the worker process only, as an orchestrator sends it; the engine child is the worker's to stop."""
        assert service.process is not None
        service.process.send_signal(signal.SIGTERM)

    def live(self) -> list[Service]:
        return [s for s in self.started if s.process and s.process.poll() is None]

    def wait_balanced(self, seconds: float = 60) -> None:
        """Waits until the live workers' latest assignments split every batch partition between them."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            owned = [self._assigned(s) for s in self.live()]
            if all(owned) and sum(len(o) for o in owned) == len(set().union(*owned)) == self.common.topic_partitions:
                return
            time.sleep(0.3)
        raise AssertionError("the workers never settled on an assignment")

    def _assigned(self, service: Service) -> set[int]:
        lines = [ln for ln in self.log(service).splitlines() if "assigned to partitions" in ln and "batches" in ln]
        return {int(p) for p in re.findall(r"partition=(\d+)", lines[-1])} if lines else set()

    def log(self, service: Service) -> str:
        return (self.workdir / f"{service.name}.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    run_id = uuid.uuid4().hex[:8]
    base = CommonSettings()
    database = f"ferry_test_worker_{run_id}"
    asyncio.run(_create_database(base.postgres_dsn, database))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FERRY_TOPIC_PREFIX": f"ferrytest-w{run_id}.",
        "FERRY_POSTGRES_DSN": _dsn(base.postgres_dsn, database),
        "FERRY_OTEL_EXPORTER": "none",
        # demand written and tiers recomputed every few seconds, with a warm threshold a test can pass
        "FERRY_WORKER_DEMAND_FLUSH_S": "1",
        "FERRY_WORKER_TIER_RECOMPUTE_S": "2",
        "FERRY_WORKER_TIER_WARM_ABOVE": str(WARM_ABOVE),
    }
    common = CommonSettings(topic_prefix=env["FERRY_TOPIC_PREFIX"], postgres_dsn=env["FERRY_POSTGRES_DSN"])
    subprocess.run([sys.executable, "-m", "shared.prepare"], env=env, cwd=ROOT, check=True, capture_output=True)
    pool = Workers(common, env, tmp_path_factory.mktemp("workers"), MODELS_DIR)
    try:
        yield pool
    finally:
        for s in pool.started:
            if s.process and s.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(s.process.pid, signal.SIGKILL)
                s.process.wait(timeout=30)
        asyncio.run(_drop_database(base.postgres_dsn, database))
        asyncio.run(delete_topics(common))


@dataclass
class Client:
    """Produces batches straight to the worker's topic and collects the reply events per request."""

    common: CommonSettings
    reply_topic: str
    producer: AIOKafkaProducer
    consumer: AIOKafkaConsumer
    events: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))

    def request(
        self, max_tokens: int, model: str = TINY_MODEL, logit_bias: dict[int, float] | None = None, **fields: object
    ) -> CompletionRequested:
        return CompletionRequested(
            request_id=f"w-{uuid.uuid4().hex[:12]}",
            model=model,
            messages=[{"role": "user", "content": "Tell me about message brokers and consumer groups."}],
            sampling=SamplingParams(max_tokens=max_tokens, temperature=1.0, logit_bias=logit_bias or {}),
            reply_topic=self.reply_topic,
            deadline_at=utc_now() + timedelta(seconds=120),
            **fields,
        )

    async def send_batch(self, requests: list[CompletionRequested], partition: int | None = None) -> None:
        model = requests[0].model
        batch = BatchFormed(batch_id=uuid.uuid4().hex, model=model, requests=requests)
        topic = self.common.topics.batches(model)
        await self.producer.send_and_wait(topic, batch.model_dump_json().encode(), partition=partition)

    async def cancel(self, request: CompletionRequested) -> None:
        cancel = RequestCancelled(request_id=request.request_id, model=TINY_MODEL, reason="client_disconnected")
        await self.producer.send_and_wait(self.common.topics.cancellations, cancel.model_dump_json().encode())

    async def read_until(self, done: object, seconds: float) -> None:
        """Reads replies until ``done()`` is true."""
        async with asyncio.timeout(seconds):
            while not done():  # type: ignore[operator]
                await self.poll()

    async def poll(self, timeout_ms: int = 200) -> None:
        """Reads the replies that arrive within ``timeout_ms``, noting when each arrived (``_received_at``) and when
        the worker published it (``_published_ms``, the record's timestamp: one poll may bring several replies)."""
        batches = await self.consumer.getmany(timeout_ms=timeout_ms)
        for records in batches.values():
            for record in records:
                event = json.loads(record.value)
                event["_received_at"] = time.monotonic()
                event["_published_ms"] = record.timestamp
                self.events[event["request_id"]].append(event)

    def final(self, request_id: str) -> dict | None:
        return next((e for e in self.events[request_id] if e["event"] in FINAL), None)

    async def wait_final(self, request_ids: list[str], seconds: float) -> None:
        await self.read_until(lambda: all(self.final(r) for r in request_ids), seconds)


@contextlib.asynccontextmanager
async def client(common: CommonSettings) -> AsyncIterator[Client]:
    reply_topic = common.topics.replies(f"worker-test-{uuid.uuid4().hex[:6]}")
    producer = AIOKafkaProducer(bootstrap_servers=common.kafka_bootstrap)
    consumer = AIOKafkaConsumer(
        reply_topic, bootstrap_servers=common.kafka_bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await producer.start()
    await consumer.start()
    try:
        yield Client(common, reply_topic, producer, consumer)
    finally:
        await producer.stop()
        await consumer.stop()


def assembled(events: list[dict]) -> str:
    """The text a reader puts together from the deltas, dropping what a redelivered generation repeats."""
    text = ""
    for event in events:
        if event["event"] != "tokens_generated":
            continue
        offset = event["text_offset"]
        assert offset <= len(text), f"gap: delta at {offset}, {len(text)} characters so far"
        text += event["text"][len(text) - offset :]
    return text


async def committed_to_the_end(common: CommonSettings, seconds: float = 10) -> None:
    topic = common.topics.batches(TINY_MODEL)
    admin = AIOKafkaAdminClient(bootstrap_servers=common.kafka_bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=common.kafka_bootstrap)
    await admin.start()
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(common.topic_partitions)]
        ends = await consumer.end_offsets(partitions)
        async with asyncio.timeout(seconds):
            while True:
                group = consumer_group("worker.", common.topic_prefix) + TINY_MODEL
                committed = await admin.list_consumer_group_offsets(group)
                # a partition that never got a batch has nothing to commit
                if all(committed[tp].offset == ends[tp] if tp in committed else ends[tp] == 0 for tp in partitions):
                    return
                await asyncio.sleep(0.2)
    finally:
        await admin.close()
        await consumer.stop()


async def test_many_concurrent_streams_complete_in_order(workers: Workers) -> None:
    if not workers.started:
        workers.start("worker-a")
    async with client(workers.common) as c:
        requests = [c.request(max_tokens=24) for _ in range(40)]
        for i in range(0, len(requests), 8):
            await c.send_batch(requests[i : i + 8])
        await c.wait_final([r.request_id for r in requests], seconds=120)

    for r in requests:
        events = c.events[r.request_id]
        assert [e["sequence"] for e in events] == list(range(len(events))), r.request_id
        final = events[-1]
        assert final["event"] == "completion_finished", final
        deltas = [e for e in events if e["event"] == "tokens_generated"]
        assert "".join(d["text"] for d in deltas) == final["text"] == assembled(events)
        offsets = [d["text_offset"] for d in deltas]
        assert offsets == [sum(len(d["text"]) for d in deltas[:i]) for i in range(len(deltas))]
        assert sum(d["token_count"] for d in deltas) == final["usage"]["completion_tokens"] > 0
    # every request finished, so the group's committed offsets reach the end of the batch topic
    await committed_to_the_end(workers.common)


async def test_workers_recompute_tiers_from_the_demand_they_serve(workers: Workers) -> None:
    if not workers.live():
        workers.start("worker-a")
    async with client(workers.common) as c:
        requests = [c.request(max_tokens=4) for _ in range(WARM_ABOVE + 5)]
        await c.send_batch(requests)
        await c.wait_final([r.request_id for r in requests], seconds=60)
    served_at = utc_now()
    conn = await asyncpg.connect(workers.common.postgres_dsn)
    try:
        async with asyncio.timeout(30):  # a demand write, then a recomputation, with no command run
            while True:
                rows = {r["model_id"]: r for r in await conn.fetch("SELECT * FROM model_tiers")}
                tiny = rows.get(TINY_MODEL)
                if tiny is not None and tiny["computed_at"] > served_at and tiny["requests_per_hour"] > WARM_ABOVE:
                    break
                await asyncio.sleep(0.5)
    finally:
        await conn.close()
    assert (tiny["tier"], tiny["replicas"]) == ("warm", 2)
    unused = [r for model, r in rows.items() if model != TINY_MODEL]
    assert unused and all((r["tier"], r["requests_per_hour"], r["replicas"]) == ("cold", 0, 0) for r in unused)


async def test_a_cancel_stops_generation_in_the_engine(workers: Workers) -> None:
    if not workers.started:
        workers.start("worker-a")
    worker = workers.started[0]
    # the random model samples its end of turn about once in 2,000 tokens: banned, it cannot end before the cancel
    end_of_turn = AutoTokenizer.from_pretrained(MODELS_DIR / TINY_MODEL).eos_token_id
    async with client(workers.common) as c:
        request = c.request(max_tokens=1900, logit_bias={end_of_turn: -100})
        await c.send_batch([request])
        await c.read_until(lambda: c.events[request.request_id], seconds=60)
        before = httpx.get(f"http://127.0.0.1:{worker.port}/metrics", timeout=5).text  # the worker may have served more
        await c.cancel(request)
        await c.wait_final([request.request_id], seconds=30)
        await asyncio.sleep(1)  # anything the engine still produced would arrive now
        await c.poll(timeout_ms=1000)

    events = c.events[request.request_id]
    final = c.final(request.request_id)
    assert final is not None and final["event"] == "generation_failed", final
    assert final["code"] == "cancelled"
    assert events[-1] is final, "no tokens after the failure"
    streamed = sum(e["token_count"] for e in events if e["event"] == "tokens_generated")
    assert streamed < 1900
    metrics = httpx.get(f"http://127.0.0.1:{worker.port}/metrics", timeout=5).text
    assert metric_total(metrics, "ferry_worker_running") == 0  # the engine holds nothing any more

    def added(name: str) -> float:
        return metric_total(metrics, name) - metric_total(before, name)

    aborts = added("ferry_worker_stop_to_abort_seconds_count")
    assert aborts == 1
    abort_s = added("ferry_worker_stop_to_abort_seconds_sum")
    # the whole time, from the cancel's decision (its cancelled_at) to the engine's stop, covers the abort itself
    assert added("ferry_worker_cancel_to_abort_seconds_count") == 1
    whole_s = added("ferry_worker_cancel_to_abort_seconds_sum")
    assert abort_s <= whole_s < 30
    # the way to the worker, in two parts: to the record's production, then to the worker; together they precede
    # the abort, so they add up to at most the whole (give or take the record timestamp's millisecond)
    assert (
        added("ferry_worker_cancel_produced_seconds_count") == added("ferry_worker_cancel_delivered_seconds_count") == 1
    )
    transit_s = added("ferry_worker_cancel_produced_seconds_sum") + added("ferry_worker_cancel_delivered_seconds_sum")
    assert 0 < transit_s <= whole_s - abort_s + 0.001
    ms = [round(x * 1000, 1) for x in (whole_s, transit_s, abort_s)]
    print("cancel: {} ms from the decision, {} to the worker, {} there".format(*ms))


async def test_a_variant_that_cannot_run_gets_a_clear_error_unless_fallback_is_allowed(workers: Workers) -> None:
    if not workers.live():
        workers.start("worker-a")
    async with client(workers.common) as c:
        strict = c.request(max_tokens=4, variant="fp8", variant_fallback=False)
        lenient = c.request(max_tokens=4, variant="fp8", variant_fallback=True)
        await c.send_batch([strict, lenient])
        await c.wait_final([strict.request_id, lenient.request_id], seconds=60)
    refused = c.final(strict.request_id)
    assert refused is not None and refused["code"] == "variant_unavailable"
    assert "cannot run on this hardware" in refused["message"] and "variant_fallback" in refused["message"]
    served = c.final(lenient.request_id)
    assert served is not None and served["event"] == "completion_finished"


async def test_worker_reports_its_capacity_and_readiness(workers: Workers) -> None:
    if not workers.live():
        workers.start("worker-a")
    worker = workers.live()[0]
    assert httpx.get(f"http://127.0.0.1:{worker.port}/ready", timeout=5).status_code == 204
    assert httpx.get(f"http://127.0.0.1:{worker.port}/live", timeout=5).status_code == 204
    common = workers.common
    consumer = AIOKafkaConsumer(
        common.topics.worker_status,
        bootstrap_servers=common.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        # a fresh heartbeat once the requests of earlier tests have finished (one run saw 20 still generating)
        async with asyncio.timeout(60):
            async for record in consumer:
                report = WorkerStatusReported.model_validate_json(record.value)
                if record.key and report.reported_at > utc_now() - timedelta(seconds=5) and report.running == 0:
                    break
    finally:
        await consumer.stop()
    assert [m.model for m in report.models] == [TINY_MODEL]
    assert report.max_running == 64 and not report.draining
    assert 0.99 <= report.kv_cache_free <= 1.0 and report.free_tokens > 100_000  # 1 GiB of KV cache, idle
    assert report.interval_seconds == 1


async def test_sigterm_drains_in_flight_requests(workers: Workers) -> None:
    if not workers.started:
        workers.start("worker-a")
    (draining,) = workers.live()  # the only worker of the group: it holds every request
    async with client(workers.common) as c:
        requests = [c.request(max_tokens=300) for _ in range(6)]
        for p in range(workers.common.topic_partitions):
            await c.send_batch(requests[p * 2 : p * 2 + 2], partition=p)
        # every batch taken (no other worker would take one left in Kafka), none finished
        await c.read_until(lambda: all(c.events[r.request_id] for r in requests), seconds=60)
        workers.terminate(draining)
        await c.wait_final([r.request_id for r in requests], seconds=90)
    assert draining.process is not None
    # uvicorn re-raises the SIGTERM it caught once shutdown is done, so the exit status is the signal's
    assert draining.process.wait(timeout=60) in (0, -signal.SIGTERM)
    for r in requests:
        final = c.final(r.request_id)
        assert final is not None and final["event"] == "completion_finished", final
        assert assembled(c.events[r.request_id]) == final["text"]
    log = workers.log(draining)
    assert "0 handed back" in log and "shut down gracefully" in log


async def test_killed_worker_s_requests_are_completed_by_another_without_duplicate_text(workers: Workers) -> None:
    while len(workers.live()) < 2:
        workers.start(f"worker-{len(workers.started)}")
    workers.wait_balanced()
    victim = workers.live()[0]
    async with client(workers.common) as c:
        requests = [c.request(max_tokens=1200) for _ in range(18)]
        partitions = workers.common.topic_partitions
        by_partition: dict[int, list[str]] = defaultdict(list)
        for i, start in enumerate(range(0, len(requests), 3)):
            await c.send_batch(requests[start : start + 3], partition=i % partitions)
            by_partition[i % partitions] += [r.request_id for r in requests[start : start + 3]]
        # kill the victim while it generates: once every partition (so both workers) has streamed something
        await c.read_until(lambda: all(any(c.events[r] for r in ids) for ids in by_partition.values()), seconds=60)
        workers.kill(victim)
        killed_at = time.monotonic()
        await c.wait_final([r.request_id for r in requests], seconds=90)
        recovered_in = time.monotonic() - killed_at

    restarted = [r for r in requests if [e["sequence"] for e in c.events[r.request_id]].count(0) > 1]
    assert restarted, "the killed worker held none of the requests mid-generation"
    for r in requests:
        events = c.events[r.request_id]
        final = c.final(r.request_id)
        assert final is not None and final["event"] == "completion_finished", (r.request_id, final)
        assert assembled(events) == final["text"], r.request_id
    print(f"{len(restarted)} requests redone; all {len(requests)} completed {recovered_in:.1f} s after the kill")


async def test_requests_a_draining_worker_cannot_finish_are_redone_by_another(workers: Workers) -> None:
    if not workers.live():
        workers.start(f"worker-{len(workers.started)}")
    impatient = workers.start("worker-impatient", FERRY_WORKER_DRAIN_SECONDS="0")
    workers.wait_balanced()
    async with client(workers.common) as c:
        requests = [c.request(max_tokens=800) for _ in range(12)]
        by_partition: dict[int, list[str]] = defaultdict(list)
        for i, start in enumerate(range(0, len(requests), 2)):
            partition = i % workers.common.topic_partitions
            await c.send_batch(requests[start : start + 2], partition=partition)
            by_partition[partition] += [r.request_id for r in requests[start : start + 2]]
        # once every partition (so both workers, the impatient one included) has streamed something
        await c.read_until(lambda: all(any(c.events[r] for r in ids) for ids in by_partition.values()), seconds=60)
        workers.terminate(impatient)
        await c.wait_final([r.request_id for r in requests], seconds=90)

    handed_back = re.search(r"(\d+) handed back", workers.log(impatient))
    assert handed_back and int(handed_back.group(1)) >= 1, "the draining worker held no unfinished request"
    for r in requests:
        final = c.final(r.request_id)
        assert final is not None and final["event"] == "completion_finished", (r.request_id, final)
        assert assembled(c.events[r.request_id]) == final["text"]


async def test_a_tenants_request_waiting_in_the_engine_goes_before_another_tenants_earlier_flood(
    workers: Workers,
) -> None:
    """More requests than the engine has seats wait in vLLM's queue (the batcher, which shares between tenants first,
    is not in the way here); there one tenant's request goes before the rest of a flood another tenant sent earlier,
    where first come, first served would put it last."""
    prefix = f"{workers.common.topic_prefix}one-seat."
    common = CommonSettings(topic_prefix=prefix, postgres_dsn=workers.common.postgres_dsn)
    worker = workers.start("worker-one-seat", FERRY_TOPIC_PREFIX=prefix, FERRY_WORKER_MAX_NUM_SEQS="1")
    try:
        async with client(common) as c:

            def long(tenant: str) -> CompletionRequested:
                request = c.request(max_tokens=192, tenant_id=tenant)
                sampling = request.sampling.model_copy(update={"ignore_eos": True})  # every one takes its 192 tokens
                return request.model_copy(update={"sampling": sampling})

            flood = [long("flooding") for _ in range(4)]
            other = long("other")
            await c.send_batch(flood, partition=0)
            # the other tenant's request comes once the flood's first has the seat: read in the same poll as the
            # flood, it would rightly take the seat first
            await c.read_until(lambda: any(e["event"] == "tokens_generated" for e in c.events[flood[0].request_id]), 60)
            await c.send_batch([other], partition=0)
            await c.wait_final([r.request_id for r in [*flood, other]], seconds=120)
    finally:
        workers.terminate(worker)
        assert worker.process is not None
        worker.process.wait(timeout=60)

    # when the worker published each final: a poll that brings two finals gives them one arrival order of its own
    finished_at = {r.request_id: c.final(r.request_id)["_published_ms"] for r in [*flood, other]}  # type: ignore[index]
    assert all(c.final(r.request_id)["event"] == "completion_finished" for r in [*flood, other])  # type: ignore[index]
    order = sorted(finished_at, key=finished_at.__getitem__)
    # the flood's first request had the one seat already; the other tenant's goes next, before the flood's second
    assert order == [flood[0].request_id, other.request_id, *(r.request_id for r in flood[1:])], order
