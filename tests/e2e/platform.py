"""Starts the platform's services for a test session, isolated from anything else on the same infrastructure:
its own topic prefix, its own PostgreSQL database, its own ports. Kafka, PostgreSQL and Redis must be running
(infra/platform test starts them)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
from redis.asyncio import Redis

from shared.kafka import delete_topics
from shared.ports import free_port
from shared.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-random"
# the model folders the tests share (built once, reused by every run): FERRY_MODELS_DIR or the installs' cache
MODELS_DIR = Path(os.environ.get("FERRY_MODELS_DIR", Path.home() / ".cache" / "ferry" / "models"))


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
    env: dict[str, str]
    api_key: str = ""
    services: list[Service] = field(default_factory=list)
    _admin_key: str = ""

    @property
    def auth(self) -> dict[str, str]:
        """Headers carrying the key of the test session's tenant ("default")."""
        return {"authorization": f"Bearer {self.api_key}"}

    def admin(self, *args: str) -> str:
        """Runs the tenant/key admin command against this session's database; returns its output."""
        done = subprocess.run(
            [sys.executable, "-m", "services.ingress.admin", *args],
            env=self.env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout.strip()

    def new_tenant(self, tenant_id: str, *options: str) -> str:
        """Creates (or updates) a tenant with admin options (e.g. "--rpm", "5") and returns a fresh key of it."""
        self.admin("tenants", "create", tenant_id, *options)
        return self.admin("keys", "create", tenant_id).split("\t")[1]

    async def tokens_counted(self, tenant_id: str, until: int | None = None) -> int:
        """What the tenant's monthly quota counts (the admin API's usage); with ``until``, read again for up to 10 s
        until it is that (a settlement comes just after the request ends)."""
        if not self._admin_key:
            self._admin_key = self.admin("admin-keys", "create", "--name", "e2e-usage").split("\t")[1]
        headers = {"authorization": f"Bearer {self._admin_key}"}
        async with httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=10) as admin:
            for _ in range(50):
                read = await admin.get(f"/admin/v1/tenants/{tenant_id}/usage")
                assert read.status_code == 200, read.text
                counted = int(read.json()["tokens"])
                if until is None or counted == until:
                    break
                await asyncio.sleep(0.2)
        return counted

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
        for attempt in range(20):
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except asyncpg.InsufficientPrivilegeError:
                # an autovacuum worker (the superuser's) is in the database and the ferry role may not end it; it
                # finishes within moments on these small databases
                if attempt == 19:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await conn.close()


def wait_healthy(
    url: str, process: subprocess.Popen[bytes] | None, deadline: float, name: str = "", log: Path | None = None
) -> None:
    """Waits until ``url``/health answers 2xx, failing early if ``process`` exits; the error carries ``log``'s tail.
    The one health wait of the tests and the benchmarks."""

    def failure(what: str) -> RuntimeError:
        return RuntimeError(f"{name or url} {what}" + (":\n" + _tail(log.parent, log.stem) if log else ""))

    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise failure(f"exited ({process.returncode})")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code < 300:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise failure("not healthy in time")


def _wait_healthy(service: Service, workdir: Path, deadline: float) -> None:
    wait_healthy(
        f"http://127.0.0.1:{service.port}", service.process, deadline, service.name, workdir / f"{service.name}.log"
    )


def _tail(workdir: Path, name: str, lines: int = 60) -> str:
    path = workdir / f"{name}.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def launch(platform: Platform, service: Service) -> None:
    """Starts one service process in its own session (so its vLLM child can be killed with it), logging to workdir."""
    log = open(platform.workdir / f"{service.name}.log", "ab")
    service.process = subprocess.Popen(
        [sys.executable, "-m", service.module],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=platform.env | service.env | {"FERRY_OTEL_CONSOLE_PATH": str(platform.traces(service.name))},
    )


def start_extra(platform: Platform, service: Service, timeout_s: float = 120) -> Service:
    """Starts one more service next to the session's (e.g. a second ingress) and waits until it is healthy; the
    caller stops it with stop_service."""
    launch(platform, service)
    try:
        _wait_healthy(service, platform.workdir, time.monotonic() + timeout_s)
    except BaseException:
        stop_service(service)
        raise
    return service


def start_extra_ingress(platform: Platform, name: str, settings: dict[str, str] | None = None) -> Service:
    """Starts one more ingress next to the session's, with its settings changed by ``settings`` (environment
    variables), its own port and instance id (so its own reply topic); the caller stops it with stop_service."""
    first = next(s for s in platform.services if s.name == "ingress")
    port = free_port()
    own = {"FERRY_INGRESS_PORT": str(port), "FERRY_INGRESS_INSTANCE_ID": f"{name}-{uuid.uuid4().hex[:6]}"}
    return start_extra(
        platform, Service(f"ingress-{name}", "services.ingress.main", port, first.env | own | (settings or {}))
    )


def stop_service(service: Service, timeout_s: float = 60) -> None:
    if service.process is None:
        return
    if service.process.poll() is None:
        service.process.send_signal(signal.SIGTERM)
    try:
        service.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass
    # the whole session: a worker's vLLM EngineCore child must not outlive it
    with contextlib.suppress(ProcessLookupError):
        os.killpg(service.process.pid, signal.SIGKILL)


def start_platform(
    workdir: Path,
    models_dir: Path,
    models: tuple[str, ...] = (DEFAULT_MODEL, TINY_MODEL),
    extra_env: dict[str, str] | None = None,
) -> Platform:
    """Starts a worker per model in ``models``, the batcher and the ingress; ``extra_env`` goes to every service."""
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
        **(extra_env or {}),
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
        for m, port in ((m, free_port()) for m in models)
    ]
    safety_port = free_port()
    safety_env = {
        "FERRY_SAFETY_PORT": str(safety_port),
        "FERRY_SAFETY_MODELS_DIR": str(models_dir),  # the tokenizers of prompts given as token ids
        # the guard-model check, through the platform's own request path, for one test tenant only (test_safety.py)
        "FERRY_SAFETY_GUARD_MODEL": TINY_MODEL,
        "FERRY_SAFETY_GUARD_TENANTS": '["guard-e2e"]',
        "FERRY_SAFETY_GUARD_TIMEOUT_S": "30",
    }
    services.append(Service("safety", "services.safety.main", safety_port, safety_env))
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
                "FERRY_INGRESS_AUTH_CACHE_S": "0.5",
                "FERRY_INGRESS_MODEL_CACHE_S": "0.5",  # registry changes (a model version bump) seen quickly
            },
        )
    )
    platform = Platform(f"http://127.0.0.1:{ingress_port}", common, workdir, models_dir, env, services=services)
    platform.api_key = platform.admin("dev-key", str(workdir / "api-key"))
    try:
        for s in services:
            launch(platform, s)
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
        stop_service(s)
    base = CommonSettings()
    database = platform.common.postgres_dsn.rsplit("/", 1)[1]
    asyncio.run(_drop_database(base.postgres_dsn, database))
    asyncio.run(delete_topics(platform.common))
    asyncio.run(_delete_cache_keys(platform.common))


async def _delete_cache_keys(common: CommonSettings) -> None:
    redis = Redis.from_url(common.redis_url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{common.topic_prefix}cache:*", count=1000)]
        if keys:
            await redis.unlink(*keys)
    finally:
        await redis.aclose()
