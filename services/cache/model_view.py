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
    states: tuple[str, ...]

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
    per_model: dict[str, list[tuple[int, int, str]]] = {}
    for report in latest.values():
        for loaded in report.models:
            per_model.setdefault(loaded.model, []).append(
                (loaded.requests_found_loaded, loaded.requests_waited_for_load, loaded.state)
            )
    return [
        ModelCacheFigures(
            model=model,
            workers=len(rows),
            found_loaded=sum(r[0] for r in rows),
            waited_for_load=sum(r[1] for r in rows),
            states=tuple(sorted({r[2] for r in rows})),
        )
        for model, rows in sorted(per_model.items())
    ]
