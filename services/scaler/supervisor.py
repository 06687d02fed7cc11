"""Local acting: starts and stops worker processes on this machine (``python -m services.worker.main``, with the same
environment infra/platform gives its workers). Scale-down sends SIGTERM, on which the worker stops consuming and
drains its requests; after ``drain_s`` the process group is killed. Only workers this supervisor started are ever
touched."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

from shared.ports import free_port

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]

State = Literal["starting", "ready", "draining"]


@dataclass
class WorkerProcess:
    name: str
    model: str
    port: int
    process: subprocess.Popen[bytes]
    started: float
    state: State = "starting"
    ready_at: float | None = None
    stop_sent: float | None = None


@dataclass(frozen=True)
class SupervisorConfig:
    logs_dir: Path
    models_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    ready_s: float = 300.0
    drain_s: float = 60.0
    command: tuple[str, ...] = (sys.executable, "-m", "services.worker.main")
    restart_backoff_s: float = 30.0
    """After a worker of a model fails (exits unasked), no new one for that model is started for this long."""


@dataclass(frozen=True)
class Event:
    """Something that happened to a worker, for logs, metrics and the load-step benchmark."""

    kind: Literal["started", "ready", "stopping", "exited", "killed", "failed"]
    worker: str
    model: str
    at: float
    detail: str = ""


class Supervisor:
    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config
        self.workers: list[WorkerProcess] = []
        self._ids = itertools.count(1)
        self._http = httpx.AsyncClient(timeout=2.0)
        self._failed_at: dict[str, float] = {}

    def replicas(self, model: str) -> int:
        """Workers that count as replicas: starting or ready, not draining."""
        return sum(1 for w in self.workers if w.model == model and w.state != "draining")

    def ready(self, model: str) -> int:
        return sum(1 for w in self.workers if w.model == model and w.state == "ready")

    def draining(self, model: str) -> int:
        return sum(1 for w in self.workers if w.model == model and w.state == "draining")

    def scale(self, model: str, desired: int) -> list[Event]:
        events: list[Event] = []
        failed = self._failed_at.get(model)
        if failed is not None and time.monotonic() - failed < self.config.restart_backoff_s:
            desired = min(desired, self.replicas(model))  # a crashing worker is not restarted in a tight loop
        while self.replicas(model) < desired:
            events.append(self._start(model))
        while self.replicas(model) > desired:
            events.append(self._stop(self._victim(model)))
        return events

    def _start(self, model: str) -> Event:
        port = free_port()
        name = f"scaled-{model}-{next(self._ids)}"
        self.config.logs_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "FERRY_WORKER_MODEL": model,
            "FERRY_WORKER_PORT": str(port),
            "FERRY_OTEL_CONSOLE_PATH": str(self.config.logs_dir / f"worker-{name}.traces.jsonl"),
            **({"FERRY_WORKER_MODELS_DIR": str(self.config.models_dir)} if self.config.models_dir else {}),
            **self.config.env,
        }
        with open(self.config.logs_dir / f"worker-{name}.log", "ab") as log:
            # its own session, so the whole group (vLLM may fork an engine process) can be reaped
            process = subprocess.Popen(
                list(self.config.command),
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        worker = WorkerProcess(name, model, port, process, time.monotonic())
        self.workers.append(worker)
        logger.info("started worker %s (pid %d, port %d)", name, process.pid, port)
        return Event("started", name, model, worker.started, f"pid {process.pid} port {port}")

    def _victim(self, model: str) -> WorkerProcess:
        # a worker still starting holds no requests: stop those first, then the newest ready one
        candidates = [w for w in self.workers if w.model == model and w.state != "draining"]
        return max(candidates, key=lambda w: (w.state == "starting", w.started))

    def _stop(self, worker: WorkerProcess) -> Event:
        worker.state = "draining"
        worker.stop_sent = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signal.SIGTERM)
        logger.info("stopping worker %s (SIGTERM; it drains)", worker.name)
        return Event("stopping", worker.name, worker.model, worker.stop_sent)

    async def poll(self) -> list[Event]:
        """Marks started workers ready once /health answers, reaps exited ones, kills those that overstay."""
        events: list[Event] = []
        now = time.monotonic()
        for w in list(self.workers):
            code = w.process.poll()
            if code is not None:
                self._kill_group(w)
                self.workers.remove(w)
                kind = "exited" if w.state == "draining" else "failed"
                if kind == "failed":
                    self._failed_at[w.model] = now
                events.append(Event(kind, w.name, w.model, now, f"exit code {code}"))
                (logger.info if kind == "exited" else logger.error)("worker %s exited (%d)", w.name, code)
                continue
            if w.state == "starting":
                if await self._healthy(w):
                    w.state, w.ready_at = "ready", now
                    events.append(Event("ready", w.name, w.model, now, f"{now - w.started:.1f} s after start"))
                    logger.info("worker %s ready after %.1f s", w.name, now - w.started)
                elif now - w.started > self.config.ready_s:
                    events.append(self._stop(w))
            elif w.state == "draining" and w.stop_sent is not None and now - w.stop_sent > self.config.drain_s:
                self._kill_group(w)
                events.append(Event("killed", w.name, w.model, now, "did not drain in time"))
        return events

    async def _healthy(self, w: WorkerProcess) -> bool:
        try:
            return (await self._http.get(f"http://127.0.0.1:{w.port}/health")).status_code < 300
        except httpx.HTTPError:
            return False

    @staticmethod
    def _kill_group(w: WorkerProcess) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(w.process.pid, signal.SIGKILL)

    async def shutdown(self) -> None:
        """Stops every worker this supervisor started, letting each drain."""
        for w in self.workers:
            if w.state != "draining":
                self._stop(w)
        deadline = time.monotonic() + self.config.drain_s
        for w in self.workers:
            try:
                await asyncio.to_thread(w.process.wait, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self._kill_group(w)
        self.workers.clear()
        await self._http.aclose()
