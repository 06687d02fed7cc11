"""Time from a load step to a new worker serving, on this machine: real Kafka and PostgreSQL (already running), a
batcher, and the scaler supervising worker processes (tiny-random model), in a database and topic prefix of their
own. Each repeat waits until the model is at zero replicas, produces a step of requests, and times the scaler's
decision, the new worker's /health, the first completion and the last."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from shared.kafka import delete_topics, ensure_topics
from shared.ports import free_port
from shared.settings import CommonSettings
from tests.e2e.platform import wait_healthy

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny-random"


def _metrics(url: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
        for s in family.samples:
            if s.labels.get("model") != MODEL:
                continue
            key = s.name + (f"[{s.labels['kind']}]" if "kind" in s.labels else "")
            found[key] = s.value
    return found


async def _wait(url: str, predicate, seconds: float) -> dict[str, float]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        values = await asyncio.to_thread(_metrics, url)
        if predicate(values):
            return values
        await asyncio.sleep(0.1)
    raise TimeoutError("the scaler did not get there in time")


async def _step(common: CommonSettings, url: str, reply_topic: str, count: int) -> dict[str, float]:
    before = await _wait(
        url, lambda v: v.get("ferry_scaler_replicas") == 0 and v.get("ferry_scaler_desired_replicas") == 0, 180
    )
    ready_before = before.get("ferry_scaler_worker_events_total[ready]", 0)
    ids = {f"step-{uuid.uuid4().hex[:10]}" for _ in range(count)}
    consumer = AIOKafkaConsumer(reply_topic, bootstrap_servers=common.kafka_bootstrap, group_id=None)
    producer = AIOKafkaProducer(bootstrap_servers=common.kafka_bootstrap)
    await consumer.start()
    await producer.start()
    marks: dict[str, float] = {}
    try:
        await consumer.seek_to_end()
        t0 = time.monotonic()
        for request_id in ids:
            body = {
                "request_id": request_id,
                "model": MODEL,
                "messages": [{"role": "user", "content": "Name three harbours."}],
                "sampling": {"max_tokens": 32, "temperature": 0},
                "stream": False,
                "reply_topic": reply_topic,
            }
            await producer.send(common.topics.requests(MODEL), json.dumps(body).encode(), key=request_id.encode())
        await producer.flush()

        async def watch_scaler() -> None:
            await _wait(url, lambda v: v.get("ferry_scaler_desired_replicas", 0) > 0, 120)
            marks["decision"] = time.monotonic() - t0
            await _wait(url, lambda v: v.get("ferry_scaler_worker_events_total[ready]", 0) > ready_before, 300)
            marks["worker_ready"] = time.monotonic() - t0

        async def watch_replies() -> None:
            done: set[str] = set()
            async for record in consumer:
                event = json.loads(record.value)
                if event.get("request_id") in ids and event["event"] in ("completion_finished", "generation_failed"):
                    if event["event"] != "completion_finished":
                        raise RuntimeError(f"request failed: {event}")
                    marks.setdefault("first_completion", time.monotonic() - t0)
                    done.add(event["request_id"])
                    if done == ids:
                        marks["all_completed"] = time.monotonic() - t0
                        return

        await asyncio.wait_for(asyncio.gather(watch_scaler(), watch_replies()), 400)
    finally:
        await producer.stop()
        await consumer.stop()
    return marks


async def _database(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def run_load_step(out: Path, repeats: int, count: int) -> dict:
    run_id = uuid.uuid4().hex[:8]
    base = CommonSettings()
    database = f"ferry_bench_{run_id}"
    asyncio.run(_database(base.postgres_dsn, f'CREATE DATABASE "{database}"'))
    dsn = base.postgres_dsn.rsplit("/", 1)[0] + "/" + database
    common = CommonSettings(topic_prefix=f"ferrybench-{run_id}.", postgres_dsn=dsn)
    workdir = out / "logs"
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FERRY_TOPIC_PREFIX": common.topic_prefix,
        "FERRY_POSTGRES_DSN": dsn,
        "FERRY_OTEL_EXPORTER": "none",
    }
    subprocess.run([sys.executable, "-m", "shared.prepare"], env=env, cwd=ROOT, check=True, capture_output=True)
    reply_topic = common.topics.replies(f"bench-{run_id}")
    asyncio.run(ensure_topics(common, [reply_topic], partitions=1))
    scaler_port = free_port()
    url = f"http://127.0.0.1:{scaler_port}"
    models_dir = os.environ.get("FERRY_WORKER_MODELS_DIR", str(Path.home() / ".cache" / "ferry" / "models"))
    procs = [
        _start(
            workdir,
            "batcher",
            "services.batcher.main",
            env | {"FERRY_BATCHER_PORT": str(free_port()), "FERRY_BATCHER_MODELS": json.dumps([MODEL])},
        ),
        _start(
            workdir,
            "scaler",
            "services.scaler.main",
            env
            | {
                "FERRY_SCALER_PORT": str(scaler_port),
                "FERRY_SCALER_GRPC_PORT": "0",
                "FERRY_SCALER_MODELS": json.dumps([MODEL]),
                "FERRY_SCALER_SUPERVISE": "true",
                "FERRY_SCALER_PREDICTIVE": "false",
                "FERRY_SCALER_INTERVAL_S": "0.5",
                "FERRY_SCALER_UP_WINDOW_S": "0",
                "FERRY_SCALER_DOWN_WINDOW_S": "2",
                "FERRY_SCALER_DOWN_COOLDOWN_S": "2",
                "FERRY_SCALER_ZERO_AFTER_S": "3",
                "FERRY_SCALER_MAX_REPLICAS": "1",
                "FERRY_SCALER_COLD_AT_MOST_PER_HOUR": "1000000",
                "FERRY_SCALER_HOT_ABOVE_PER_HOUR": "2000000",
                "FERRY_SCALER_WORKER_MODELS_DIR": models_dir,
                "FERRY_SCALER_WORKER_LOGS_DIR": str(workdir),
                "FERRY_SCALER_WORKER_ENV": json.dumps({"FERRY_WORKER_KV_CACHE_GIB": "0.25"}),
            },
        ),
    ]
    results: list[dict[str, float]] = []
    try:
        wait_healthy(url, procs[1], time.monotonic() + 120, "scaler", workdir / "scaler.log")
        for i in range(repeats):
            marks = asyncio.run(_step(common, url, reply_topic, count))
            print(f"repeat {i + 1}: " + ", ".join(f"{k} {v:.1f} s" for k, v in marks.items()), flush=True)
            results.append(marks)
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        asyncio.run(_database(base.postgres_dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        asyncio.run(delete_topics(common))
    keys = ["decision", "worker_ready", "first_completion", "all_completed"]
    summary = {k: statistics.median(r[k] for r in results) for k in keys if results and all(k in r for r in results)}
    lines = [
        "# Load step to a new worker serving (this machine)",
        "",
        f"{count} requests (tiny-random, 32 new tokens each) produced at once to a model at zero replicas; the "
        f"scaler decides every 0.5 s and starts a worker process; {repeats} repeat(s), seconds after the step:",
        "",
        "| repeat | scaler decision | worker /health ready | first completion | all completed |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {i + 1} | " + " | ".join(f"{r.get(k, float('nan')):.1f}" for k in keys) + " |"
            for i, r in enumerate(results)
        ),
        "| median | " + " | ".join(f"{summary.get(k, float('nan')):.1f}" for k in keys) + " |",
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps({"repeats": results, "median": summary}, indent=2))
    print("\n".join(lines))
    return summary


def _start(workdir: Path, name: str, module: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(workdir / f"{name}.log", "ab")
    return subprocess.Popen(
        [sys.executable, "-m", module], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
