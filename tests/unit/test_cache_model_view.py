"""The model cache view from worker heartbeats: latest report per worker, summed per model."""

from __future__ import annotations

from datetime import timedelta

from services.cache.model_view import model_cache_view
from shared.contracts import LoadedModel, ModelRequestCounts, WorkerStatusReported, utc_now


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


def test_an_evicted_model_keeps_its_counts() -> None:
    # w1 served a and b, then evicted b: its heartbeat holds only a, but its cumulative counts still name b
    w1 = report("w1", 0, a=(5, 1)).model_copy(
        update={
            "model_requests": [
                ModelRequestCounts(model="a", variant="bf16", requests_found_loaded=5, requests_waited_for_load=1),
                ModelRequestCounts(model="b", variant="bf16", requests_found_loaded=3, requests_waited_for_load=1),
                ModelRequestCounts(model="b", variant="int8", requests_found_loaded=0, requests_waited_for_load=1),
            ]
        }
    )
    older_worker = report("w2", 0, b=(4, 0))  # no model_requests: its loaded models' counts are used
    view = {v.model: v for v in model_cache_view([w1, older_worker])}
    assert (view["a"].found_loaded, view["a"].waited_for_load, view["a"].workers) == (5, 1, 1)
    assert (view["b"].found_loaded, view["b"].waited_for_load, view["b"].workers) == (7, 2, 2)
    assert view["b"].states == ("ready",)  # held by w2 only
    evicted_everywhere = model_cache_view([w1])
    assert [(v.model, v.states, v.hit_ratio) for v in evicted_everywhere] == [("a", ("ready",), 5 / 6), ("b", (), 0.6)]
