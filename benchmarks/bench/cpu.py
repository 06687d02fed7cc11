"""CPU time by component, read from /proc: what serving the requests of one run costs in CPU, not only in latency.

A component is a process with everything under it: its live descendants (a worker's or vLLM server's EngineCore, the
OpenMP and Kafka threads of each) and the children it has already reaped (PostgreSQL's connection backends). A child
that exits during the run without being reaped is missed, so figures are at worst a little low."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[2]
INFRA = ("kafka", "postgres", "redis")


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, own CPU seconds of all its threads, CPU seconds of the children it reaped); None once gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    ppid, utime, stime, cutime, cstime = int(fields[1]), *(int(f) for f in fields[11:15])
    return ppid, (utime + stime) / _TICKS, (cutime + cstime) / _TICKS


def tree_cpu_seconds(roots: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each root process and all under it, by component name."""
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p))) is not None}
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _, _) in stats.items():
        children[ppid].append(pid)
    out: dict[str, float] = {}
    for name, root in roots.items():
        if root not in stats:
            continue
        total, todo = stats[root][2], [root]
        while todo:
            pid = todo.pop()
            total += stats[pid][1]
            todo += children.get(pid, [])
        out[name] = total
    return out


def infra_pids(run_dir: Path | None = None) -> dict[str, int]:
    """Kafka's, PostgreSQL's and Redis's pids from the pid files infra/platform writes, for those running."""
    run_dir = run_dir or Path(os.environ.get("FERRY_STATE", ROOT / ".state")) / "run"
    pids = {}
    for name in INFRA:
        try:
            pid = int((run_dir / f"{name}.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            continue
        if _stat(pid) is not None:
            pids[name] = pid
    return pids


@dataclass
class CpuMeter:
    """CPU seconds each component spends between ``start`` and ``stop``."""

    roots: dict[str, int]
    _before: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self._before = tree_cpu_seconds(self.roots)

    def stop(self) -> dict[str, float]:
        after = tree_cpu_seconds(self.roots)
        return {name: after[name] - self._before[name] for name in self.roots if name in after and name in self._before}
