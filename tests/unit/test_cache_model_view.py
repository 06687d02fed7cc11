"""The model cache view from worker heartbeats: latest report per worker, summed per model."""

from __future__ import annotations

from datetime import timedelta

from services.cache.model_view import model_cache_view
from shared.contracts import LoadedModel, WorkerStatusReported, utc_now


def report(worker: str, age_s: float, **models: tuple[int, int]) -> WorkerStatusReported:
    return WorkerStatusReported(
        worker_id=worker,
        models=[
            LoadedModel(
                model=m, variant="bf16", state="ready", requests_found_loaded=hit, requests_waited_for_load=miss
            )
            for m, (hit, miss) in models.items()
        ],
        running=0,
        waiting=0,
        max_running=8,
        kv_cache_free=1.0,
        free_tokens=100,
        interval_seconds=5,
        reported_at=utc_now() - timedelta(seconds=age_s),
    )


def test_latest_report_per_worker_summed_per_model() -> None:
    view = model_cache_view(
        [
            report("w1", 10, a=(1, 1)),
            report("w1", 0, a=(8, 2), b=(0, 1)),  # newer counts of the same worker replace the older ones
            report("w2", 3, a=(10, 0)),
        ]
    )
    assert [(v.model, v.workers, v.found_loaded, v.waited_for_load) for v in view] == [("a", 2, 18, 2), ("b", 1, 0, 1)]
    assert view[0].hit_ratio == 0.9 and view[1].hit_ratio == 0.0


def test_no_requests_means_no_ratio() -> None:
    assert model_cache_view([report("w", 0, a=(0, 0))])[0].hit_ratio is None
    assert model_cache_view([]) == []
