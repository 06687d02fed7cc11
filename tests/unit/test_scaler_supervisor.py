"""The supervisor with real child processes standing in for workers (a few lines of Python that serve /health on
FERRY_WORKER_PORT and leave on SIGTERM), so its process handling is checked without starting vLLM."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from services.scaler.supervisor import Supervisor, SupervisorConfig

FAKE_WORKER = r"""
import http.server, os, signal, sys, threading, time
print("model", os.environ["FERRY_WORKER_MODEL"], flush=True)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
server = http.server.HTTPServer(("127.0.0.1", int(os.environ["FERRY_WORKER_PORT"])), H)
def drain(*_):
    print("draining", flush=True); time.sleep(0.3); os._exit(0)
signal.signal(signal.SIGTERM, drain)
time.sleep(float(os.environ.get("START_DELAY", "0.2")))
server.serve_forever()
"""


def supervisor(tmp_path: Path, script: str = FAKE_WORKER, **config: object) -> Supervisor:
    return Supervisor(
        SupervisorConfig(logs_dir=tmp_path, command=(sys.executable, "-c", script), drain_s=5, **config)  # type: ignore[arg-type]
    )


async def poll_until(sup: Supervisor, predicate, seconds: float = 20) -> list:
    events = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        events += await sup.poll()
        if predicate(events):
            return events
        await asyncio.sleep(0.1)
    raise AssertionError(f"not reached; events so far {events}")


async def test_workers_start_become_ready_and_drain_on_scale_down(tmp_path: Path) -> None:
    sup = supervisor(tmp_path)
    try:
        started = sup.scale("m", 2)
        assert [e.kind for e in started] == ["started", "started"]
        assert (sup.replicas("m"), sup.ready("m")) == (2, 0)  # starting ones count as replicas
        await poll_until(sup, lambda ev: sum(e.kind == "ready" for e in ev) == 2)
        assert sup.ready("m") == 2
        [stopping] = sup.scale("m", 1)
        assert stopping.kind == "stopping" and stopping.worker.endswith("-2")  # the newest goes first
        assert (sup.replicas("m"), sup.draining("m")) == (1, 1)
        [exited] = [
            e for e in await poll_until(sup, lambda ev: any(e.kind == "exited" for e in ev)) if e.kind == "exited"
        ]
        assert exited.worker == stopping.worker and exited.detail == "exit code 0"
        log = (tmp_path / f"worker-{stopping.worker}.log").read_text()
        assert "model m" in log and "draining" in log
    finally:
        await sup.shutdown()
    assert sup.workers == []


async def test_a_starting_worker_is_stopped_before_a_ready_one(tmp_path: Path) -> None:
    sup = supervisor(tmp_path)
    try:
        sup.scale("m", 1)
        await poll_until(sup, lambda ev: any(e.kind == "ready" for e in ev))
        sup.config.env["START_DELAY"] = "30"
        sup.scale("m", 2)
        [stopping] = sup.scale("m", 1)
        assert stopping.worker.endswith("-2")
        assert sup.ready("m") == 1
    finally:
        await sup.shutdown()


async def test_a_crashing_worker_is_not_restarted_in_a_tight_loop(tmp_path: Path) -> None:
    sup = supervisor(tmp_path, script="import sys; sys.exit(3)", restart_backoff_s=60)
    try:
        sup.scale("m", 1)
        events = await poll_until(sup, lambda ev: any(e.kind == "failed" for e in ev))
        assert [e.detail for e in events if e.kind == "failed"] == ["exit code 3"]
        assert sup.replicas("m") == 0
        assert sup.scale("m", 1) == [] and sup.replicas("m") == 0  # backing off
        assert sup.scale("other", 1)[0].kind == "started"  # other models are not held back
    finally:
        await sup.shutdown()
