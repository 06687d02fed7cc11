"""Starts the platform's services for a test session, isolated from anything else on the same infrastructure:
its own topic prefix, its own PostgreSQL database, its own ports. Kafka, PostgreSQL and Redis must be running
(infra/platform test starts them)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
from aiokafka.admin import AIOKafkaAdminClient

from shared.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-random"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    name: str
    module: str
    port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None


@dataclass
class Platform:
    base_url: str
    common: CommonSettings
    workdir: Path
    models_dir: Path
    services: list[Service] = field(default_factory=list)

    def url(self, name: str) -> str:
        """Base URL of a service by name (e.g. the safety service's review UI)."""
        service = next(s for s in self.services if s.name == name)
        return f"http://127.0.0.1:{service.port}"

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def traces(self, name: str) -> Path:
        return self.workdir / f"{name}.traces.jsonl"


def _dsn(base: str, database: str) -> str:
    return base.rsplit("/", 1)[0] + "/" + database


async def _create_database(base_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(base_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(base_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(base_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _delete_topics(common: CommonSettings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=common.kafka_bootstrap)
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith(common.topic_prefix)]
        if ours:
            await admin.delete_topics(ours)
    finally:
        await admin.close()


def _wait_healthy(service: Service, workdir: Path, deadline: float) -> None:
    url = f"http://127.0.0.1:{service.port}/health"
    while time.monotonic() < deadline:
        assert service.process is not None
        if service.process.poll() is not None:
            raise RuntimeError(
                f"{service.name} exited ({service.process.returncode}):\n" + _tail(workdir, service.name)
            )
        try:
            if httpx.get(url, timeout=2).status_code < 300:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{service.name} not healthy in time:\n" + _tail(workdir, service.name))


def _tail(workdir: Path, name: str, lines: int = 60) -> str:
    path = workdir / f"{name}.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def start_platform(workdir: Path, models_dir: Path) -> Platform:
    run_id = uuid.uuid4().hex[:8]
    base = CommonSettings()
    database = f"ferry_test_{run_id}"
    asyncio.run(_create_database(base.postgres_dsn, database))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FERRY_TOPIC_PREFIX": f"ferrytest-{run_id}.",
        "FERRY_POSTGRES_DSN": _dsn(base.postgres_dsn, database),
        "FERRY_OTEL_EXPORTER": "console",
    }
    common = CommonSettings(topic_prefix=env["FERRY_TOPIC_PREFIX"], postgres_dsn=env["FERRY_POSTGRES_DSN"])
    subprocess.run([sys.executable, "-m", "shared.prepare"], env=env, cwd=ROOT, check=True, capture_output=True)

    ingress_port = free_port()
    services = [
        Service(
            f"worker-{m}",
            "services.worker.main",
            port,
            {
                "FERRY_WORKER_MODEL": m,
                "FERRY_WORKER_PORT": str(port),
                "FERRY_WORKER_MODELS_DIR": str(models_dir),
            },
        )
        for m, port in ((DEFAULT_MODEL, free_port()), (TINY_MODEL, free_port()))
    ]
    safety_port = free_port()
    services.append(Service("safety", "services.safety.main", safety_port, {"FERRY_SAFETY_PORT": str(safety_port)}))
    batcher_port = free_port()
    services.append(
        Service("batcher", "services.batcher.main", batcher_port, {"FERRY_BATCHER_PORT": str(batcher_port)})
    )
    services.append(
        Service(
            "ingress",
            "services.ingress.main",
            ingress_port,
            {
                "FERRY_INGRESS_PORT": str(ingress_port),
                "FERRY_INGRESS_INSTANCE_ID": f"test-{run_id}",
            },
        )
    )
    platform = Platform(f"http://127.0.0.1:{ingress_port}", common, workdir, models_dir, services)
    try:
        for s in services:
            log = open(workdir / f"{s.name}.log", "ab")
            s.process = subprocess.Popen(
                [sys.executable, "-m", s.module],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env | s.env | {"FERRY_OTEL_CONSOLE_PATH": str(platform.traces(s.name))},
            )
        deadline = time.monotonic() + 300
        for s in services:
            _wait_healthy(s, workdir, deadline)
    except BaseException:
        stop_platform(platform)
        raise
    return platform


def stop_platform(platform: Platform) -> None:
    for s in reversed(platform.services):
        if s.process and s.process.poll() is None:
            s.process.send_signal(signal.SIGTERM)
    for s in platform.services:
        if s.process:
            try:
                s.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            # the whole session: a worker's vLLM EngineCore child must not outlive it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(s.process.pid, signal.SIGKILL)
    base = CommonSettings()
    database = platform.common.postgres_dsn.rsplit("/", 1)[1]
    asyncio.run(_drop_database(base.postgres_dsn, database))
    asyncio.run(_delete_topics(platform.common))
