"""The scaler acting on this machine: real Kafka, PostgreSQL, batcher, and worker processes the scaler starts and
stops itself (tiny-random model, windows and cooldowns of a few seconds). The tests run in order on one scaler:
a load step on a model at zero replicas starts workers that consume it; idle, the workers drain and stop without
losing a request; at zero again, one request wakes the model and completes; KEDA's gRPC calls see the same decisions.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.scaler.externalscaler import externalscaler_pb2 as pb
from services.scaler.externalscaler import externalscaler_pb2_grpc as pb_grpc
from services.scaler.ops import live_values
from shared.kafka import delete_topics, ensure_topics
from shared.settings import CommonSettings
from tests.e2e.platform import (
    MODELS_DIR,
    ROOT,
    TINY_MODEL,
    _create_database,
    _drop_database,
    _dsn,
    free_port,
    wait_healthy,
)

TARGET_TOKENS = 1000


@dataclass
class Scaled:
    common: CommonSettings
    env: dict[str, str]
    workdir: Path
    scaler_url: str
    grpc_address: str
    reply_topic: str
    processes: dict[str, subprocess.Popen[bytes]]

    def metrics(self) -> dict[str, float | str]:
        return live_values(httpx.get(f"{self.scaler_url}/metrics", timeout=5).text).get(TINY_MODEL, {})

    def wait_for(self, what: str, predicate, seconds: float = 240) -> dict[str, float | str]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for name, p in self.processes.items():
                assert p.poll() is None, f"{name} exited:\n{self.log(name)[-3000:]}"
            values = self.metrics()
            if predicate(values):
                return values
            time.sleep(0.5)
        raise AssertionError(
            f"timed out waiting for {what}; scaler says {self.metrics()}\n{self.log('scaler')[-3000:]}"
        )

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def worker_logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("worker-scaled-*.log")))

    async def decisions(self) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.common.postgres_dsn)
        try:
            return await conn.fetch("SELECT * FROM scaler_decisions WHERE model = $1 ORDER BY id", TINY_MODEL)
        finally:
            await conn.close()


def _start(workdir: Path, name: str, module: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(workdir / f"{name}.log", "ab")
    return subprocess.Popen(
        [sys.executable, "-m", module], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scaled]:
    workdir = tmp_path_factory.mktemp("scaler")
    run_id = uuid.uuid4().hex[:8]
    base = CommonSettings()
    database = f"ferry_test_{run_id}"
    asyncio.run(_create_database(base.postgres_dsn, database))
    models_dir = str(MODELS_DIR)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FERRY_TOPIC_PREFIX": f"ferrytest-{run_id}.",
        "FERRY_POSTGRES_DSN": _dsn(base.postgres_dsn, database),
        "FERRY_OTEL_EXPORTER": "none",
    }
    common = CommonSettings(topic_prefix=env["FERRY_TOPIC_PREFIX"], postgres_dsn=env["FERRY_POSTGRES_DSN"])
    subprocess.run([sys.executable, "-m", "shared.prepare"], env=env, cwd=ROOT, check=True, capture_output=True)
    reply_topic = common.topics.replies(f"scaler-test-{run_id}")
    asyncio.run(ensure_topics(common, [reply_topic], partitions=1))
    batcher_port, scaler_port, grpc_port = free_port(), free_port(), free_port()
    scaler_env = {
        "FERRY_SCALER_PORT": str(scaler_port),
        "FERRY_SCALER_GRPC_PORT": str(grpc_port),
        "FERRY_SCALER_MODELS": json.dumps([TINY_MODEL]),
        "FERRY_SCALER_SUPERVISE": "true",
        "FERRY_SCALER_WORKER_CONTROL": "true",
        "FERRY_SCALER_PREDICTIVE": "false",  # no history here: the forecast would only echo the step back
        "FERRY_SCALER_INTERVAL_S": "1",
        "FERRY_SCALER_TARGET_BACKLOG_TOKENS": str(TARGET_TOKENS),
        "FERRY_SCALER_MAX_REPLICAS": "2",
        "FERRY_SCALER_UP_WINDOW_S": "0",
        "FERRY_SCALER_UP_COOLDOWN_S": "2",
        "FERRY_SCALER_DOWN_WINDOW_S": "2",
        "FERRY_SCALER_DOWN_COOLDOWN_S": "2",
        "FERRY_SCALER_ZERO_AFTER_S": "3",
        "FERRY_SCALER_COLD_AT_MOST_PER_HOUR": "1000000",  # cold whatever the tests send: it may go to zero
        "FERRY_SCALER_HOT_ABOVE_PER_HOUR": "2000000",
        "FERRY_SCALER_DRAIN_S": "60",
        "FERRY_SCALER_WORKER_MODELS_DIR": models_dir,
        "FERRY_SCALER_WORKER_LOGS_DIR": str(workdir),
        "FERRY_SCALER_WORKER_ENV": json.dumps({"FERRY_WORKER_KV_CACHE_GIB": "0.25"}),
    }
    safety_port = free_port()
    processes = {
        # the real pipeline: prompts reach the batcher through the safety stage (rules only, to start fast)
        "safety": _start(
            workdir,
            "safety",
            "services.safety.main",
            env
            | {
                "FERRY_SAFETY_PORT": str(safety_port),
                "FERRY_SAFETY_MODELS": json.dumps([TINY_MODEL]),
                "FERRY_SAFETY_EMBEDDING": "false",
                "FERRY_SAFETY_INJECTION": "false",
            },
        ),
        "batcher": _start(
            workdir,
            "batcher",
            "services.batcher.main",
            env | {"FERRY_BATCHER_PORT": str(batcher_port), "FERRY_BATCHER_MODELS": json.dumps([TINY_MODEL])},
        ),
        "scaler": _start(workdir, "scaler", "services.scaler.main", env | scaler_env),
    }
    result = Scaled(
        common, env, workdir, f"http://127.0.0.1:{scaler_port}", f"127.0.0.1:{grpc_port}", reply_topic, processes
    )
    try:
        deadline = time.monotonic() + 120
        wait_healthy(f"http://127.0.0.1:{safety_port}", processes["safety"], deadline, log=workdir / "safety.log")
        wait_healthy(f"http://127.0.0.1:{batcher_port}", processes["batcher"], deadline, log=workdir / "batcher.log")
        wait_healthy(result.scaler_url, processes["scaler"], deadline, log=workdir / "scaler.log")
        yield result
    finally:
        for p in processes.values():  # the scaler stops (and drains) the workers it started
            p.send_signal(signal.SIGTERM)
        for p in processes.values():
            try:
                p.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        asyncio.run(_drop_database(base.postgres_dsn, database))
        asyncio.run(delete_topics(common))


def _request(scaled: Scaled, request_id: str, max_tokens: int) -> bytes:
    return json.dumps(
        {
            "request_id": request_id,
            "model": TINY_MODEL,
            "messages": [{"role": "user", "content": "Count the ships in the harbour."}],
            "sampling": {"max_tokens": max_tokens, "temperature": 0},
            "stream": False,
            "reply_topic": scaled.reply_topic,
        }
    ).encode()


async def send_and_collect(scaled: Scaled, count: int, max_tokens: int, seconds: float = 300) -> dict[str, dict]:
    """Produces ``count`` requests at once and returns each one's final event."""
    bootstrap = scaled.common.kafka_bootstrap
    ids = [f"scale-{uuid.uuid4().hex[:10]}" for _ in range(count)]
    consumer = AIOKafkaConsumer(scaled.reply_topic, bootstrap_servers=bootstrap, group_id=None)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await consumer.start()
    await producer.start()
    finals: dict[str, dict] = {}
    try:
        await consumer.seek_to_end()
        for request_id in ids:
            await producer.send(
                scaled.common.topics.requests(TINY_MODEL),
                _request(scaled, request_id, max_tokens),
                key=request_id.encode(),
            )
        await producer.flush()
        async with asyncio.timeout(seconds):
            async for record in consumer:
                event = json.loads(record.value)
                if event.get("request_id") in ids and event["event"] in ("completion_finished", "generation_failed"):
                    finals[event["request_id"]] = event
                    if len(finals) == count:
                        break
    finally:
        await producer.stop()
        await consumer.stop()
    return finals


async def _worker_control(scaled: Scaled) -> list[tuple[str, str]]:
    consumer = AIOKafkaConsumer(
        scaled.common.topics.worker_control,
        bootstrap_servers=scaled.common.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=3000)
    finally:
        await consumer.stop()
    return [
        (dict(r.headers)["ferry-message-type"].decode(), json.loads(r.value)["model"])
        for records in batch.values()
        for r in records
    ]


def _finished_ids(log: str) -> set[str]:
    return {line.split("request ", 1)[1].split(" ", 1)[0] for line in log.splitlines() if " finished: " in line}


async def test_a_load_step_on_a_model_at_zero_starts_workers_that_consume_it(scaled: Scaled) -> None:
    at_rest = scaled.wait_for("the scaler's first decisions", lambda v: "desired" in v)
    assert (at_rest["replicas"], at_rest["desired"], at_rest["tier"]) == (0, 0, "cold")

    # 30 requests of ~72 tokens (prompt estimate plus max_tokens): ~2200 tokens over a 1000-token target -> 2 replicas
    finals = await send_and_collect(scaled, 30, max_tokens=64)

    assert len(finals) == 30 and all(e["event"] == "completion_finished" for e in finals.values()), finals
    ups = [d for d in await scaled.decisions() if d["action"] == "scale_up"]
    assert ups, "no scale-up was recorded"
    # the first decision may see only part of the step (the requests arrive over a second or so): it wakes the model
    # with what it sees, and the backlog, still there while workers start, takes it to 2
    assert ups[0]["current_replicas"] == 0 and ups[0]["reason"].startswith("wake on demand, reactive wants")
    # it woke on demand it saw: requests arrived on the request topic (they may still be in the safety stage's hands,
    # which the backlog does not count), or a backlog behind the stage (unread records, or the batcher's queue depth)
    first = json.loads(ups[0]["signals"])
    assert first["recent_requests"] > 0 or first["backlog_tokens"] > 0, first
    # two replicas can only come from the backlog: ceil(backlog tokens / the 1000-token target)
    assert max(d["desired_replicas"] for d in ups) == 2
    assert max(json.loads(d["signals"])["backlog_tokens"] for d in ups) > 1000
    # the workers the scaler started are the ones that served the requests; a worker logs a request's end just after
    # publishing its final event, so the line may trail the reply by a moment
    deadline = time.monotonic() + 30
    while not _finished_ids(scaled.worker_logs()) >= set(finals) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert _finished_ids(scaled.worker_logs()) >= set(finals)
    assert len(list(scaled.workdir.glob("worker-scaled-*.log"))) == 2


async def test_idle_workers_drain_and_stop_without_losing_a_request(scaled: Scaled) -> None:
    scaled.wait_for("a ready worker", lambda v: v.get("replicas", 0) >= 1)
    seen = len(scaled.log("scaler"))  # earlier tests' workers exited too: count this test's only
    # workers commit a request only once it finished, so Kafka shows the model busy until its last request is done:
    # scale-down comes after the work, and the workers it stops drain and exit on their own
    finals = await send_and_collect(scaled, 24, max_tokens=1500)
    scaled.wait_for("scale to zero", lambda v: v.get("replicas") == 0 and v.get("desired") == 0, seconds=120)

    assert len(finals) == 24, "requests were lost"
    assert all(e["event"] == "completion_finished" and e["finish_reason"] != "abort" for e in finals.values()), [
        (e.get("finish_reason"), e.get("code")) for e in finals.values()
    ]
    downs = [d for d in await scaled.decisions() if d["action"] == "scale_down"]
    assert downs and downs[-1]["desired_replicas"] == 0
    assert downs[-1]["reason"].startswith("scale to zero: cold and idle")
    deadline = time.monotonic() + 60
    while scaled.log("scaler")[seen:].count(" exited (") < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    scaler_log = scaled.log("scaler")[seen:]
    # both stopped on their own once drained (exit 0; -15 was how uvicorn ended them before shared.runtime.serve).
    # Workers an earlier test's scale-down stopped may exit within this window too (once, 4 exits all 0): every exit
    # seen must be a clean one, none killed or crashed
    exits = [line.rsplit("(", 1)[1].rstrip(")") for line in scaler_log.splitlines() if " exited (" in line]
    assert len(exits) >= 2 and set(exits) <= {"0", "-15"}, exits
    assert "did not drain" not in scaler_log


async def test_a_cold_model_at_zero_wakes_on_a_request_that_completes(scaled: Scaled) -> None:
    scaled.wait_for("zero replicas", lambda v: v.get("replicas") == 0 and v.get("desired") == 0, seconds=120)
    async with grpc.aio.insecure_channel(scaled.grpc_address) as channel:
        keda = pb_grpc.ExternalScalerStub(channel)
        ref = pb.ScaledObjectRef(name="worker-tiny-random", namespace="ferry", scalerMetadata={"model": TINY_MODEL})
        assert (await keda.IsActive(ref)).result is False
        before = len(await scaled.decisions())

        started = time.monotonic()
        finals = await send_and_collect(scaled, 1, max_tokens=16)
        waited = time.monotonic() - started

        [final] = finals.values()
        assert final["event"] == "completion_finished" and final["usage"]["completion_tokens"] > 0
        wake = [d for d in (await scaled.decisions())[before:] if d["action"] == "scale_up"]
        assert wake and (wake[0]["current_replicas"], wake[0]["desired_replicas"]) == (0, 1)
        assert wake[0]["reason"].startswith("wake on demand")
        # KEDA, asking now, sees the model active with one replica's worth of metric (or zero once idle again)
        # (the scaler may decide between the reads: each answer is the decision before them or the one after)
        spec = await keda.GetMetricSpec(ref)
        desired_before = scaled.metrics()["desired"]
        metric = await keda.GetMetrics(
            pb.GetMetricsRequest(scaledObjectRef=ref, metricName=spec.metricSpecs[0].metricName)
        )
        active = (await keda.IsActive(ref)).result
        desired = {desired_before, scaled.metrics()["desired"]}
        assert metric.metricValues[0].metricValueFloat in {d * TARGET_TOKENS for d in desired}
        assert active in {d > 0 for d in desired}
    commands = await _worker_control(scaled)
    assert ("ModelPreloadRequested", TINY_MODEL) in commands  # woken: load it
    assert ("ModelEvictionRequested", TINY_MODEL) in commands  # scaled to zero earlier: unload it
    ops = subprocess.run(
        [sys.executable, "-m", "services.scaler.ops", "--url", scaled.scaler_url, TINY_MODEL],
        env=scaled.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ops.returncode == 0, ops.stderr
    assert f"== {TINY_MODEL}  tier cold" in ops.stdout and "wake on demand" in ops.stdout, ops.stdout
    print(f"request to a model at zero replicas completed in {waited:.1f} s (worker start included)")
