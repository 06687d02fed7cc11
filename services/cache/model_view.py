"""The model cache as one view: of the requests that reached a worker, how many found their model loaded. Pure logic
over worker heartbeats (WorkerStatusReported): each carries cumulative counts per model, so the latest report of each
worker is enough and a missed heartbeat loses nothing."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from shared.contracts import WorkerStatusReported


@dataclass(frozen=True)
class ModelCacheFigures:
    model: str
    workers: int
    found_loaded: int
    waited_for_load: int
    states: tuple[str, ...]  # of the workers holding it now; empty once every worker has evicted it

    @property
    def hit_ratio(self) -> float | None:
        total = self.found_loaded + self.waited_for_load
        return self.found_loaded / total if total else None


def model_cache_view(reports: Iterable[WorkerStatusReported]) -> list[ModelCacheFigures]:
    latest: dict[str, WorkerStatusReported] = {}
    for report in reports:
        seen = latest.get(report.worker_id)
        if seen is None or report.reported_at >= seen.reported_at:
            latest[report.worker_id] = report
    counts: dict[str, dict[str, list[int]]] = {}  # model -> worker -> [found loaded, waited]
    states: dict[str, set[str]] = {}
    for report in latest.values():
        for loaded in report.models:
            states.setdefault(loaded.model, set()).add(loaded.state)
        # model_requests keeps evicted models' counts; workers that predate it only report what they hold
        rows = report.model_requests or report.models
        for row in rows:
            found = counts.setdefault(row.model, {}).setdefault(report.worker_id, [0, 0])
            found[0] += row.requests_found_loaded
            found[1] += row.requests_waited_for_load
    return [
        ModelCacheFigures(
            model=model,
            workers=len(per_worker),
            found_loaded=sum(c[0] for c in per_worker.values()),
            waited_for_load=sum(c[1] for c in per_worker.values()),
            states=tuple(sorted(states.get(model, ()))),
        )
        for model, per_worker in sorted(counts.items())
    ]
