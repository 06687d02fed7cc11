from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.scaler.signals import DemandCounter, StatusBoard, batch_tokens, extrapolate, request_tokens
from shared.contracts import (
    BatchFormed,
    ChatMessage,
    CompletionRequested,
    LoadedModel,
    QueueDepthReported,
    SamplingParams,
    WorkerStatusReported,
)

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def request(content: str = "x" * 40, max_tokens: int = 100, prompt: str | None = None) -> CompletionRequested:
    return CompletionRequested(
        request_id="r",
        model="m",
        messages=[] if prompt is not None else [ChatMessage(role="user", content=content)],
        prompt=prompt,
        sampling=SamplingParams(max_tokens=max_tokens),
        reply_topic="t",
    )


def test_a_request_weighs_its_prompt_estimate_plus_max_new_tokens() -> None:
    assert request_tokens(request("x" * 40, 100)) == 10 + 4 + 100  # 4 of chat template for its one message
    assert request_tokens(request(prompt="y" * 41, max_tokens=8)) == 11 + 8  # ceil(41 / 4), no template
    batch = BatchFormed(batch_id="b", model="m", requests=[request("x" * 40, 100), request("x" * 4, 10)])
    assert batch_tokens(batch) == (2, 114 + 15)
    # a producer on Kafka may ask for more than the model's context; its worker cuts it there, so it weighs no more
    assert request_tokens(request("x" * 40, 1_000_000), {"m": 2048}) == 2048
    assert request_tokens(request("x" * 40, 1_000_000), {"other": 2048}) == 1_000_014
    assert batch_tokens(batch, {"m": 100}) == (2, 100 + 15)


def test_lag_is_weighed_from_the_records_peeked() -> None:
    assert extrapolate(0, [(1, 500)]) == (0.0, 0.0)
    assert extrapolate(10, []) == (10.0, 0.0)  # nothing readable: records count as requests, weight unknown
    # 4 batch records, 2 peeked holding 3 and 5 requests: 16 requests, 2 x (300 + 500) tokens
    assert extrapolate(4, [(3, 300), (5, 500)]) == (16.0, 1600.0)


def queue(batcher: str, waiting: int, tokens: int, at: datetime, model: str = "m") -> QueueDepthReported:
    return QueueDepthReported(
        model=model,
        batcher_id=batcher,
        waiting=waiting,
        waiting_tokens=tokens,
        expected_wait_seconds=0,
        interval_seconds=5,
        reported_at=at,
    )


def worker(worker_id: str, at: datetime, state: str = "ready", draining: bool = False) -> WorkerStatusReported:
    return WorkerStatusReported(
        worker_id=worker_id,
        models=[LoadedModel(model="m", variant="bf16", state=state)],
        running=0,
        waiting=0,
        max_running=8,
        kv_cache_free=1.0,
        free_tokens=1000,
        draining=draining,
        interval_seconds=5,
        reported_at=at,
    )


def test_queue_reports_add_up_over_batchers_and_expire_after_two_missed_reports() -> None:
    board = StatusBoard(max_age=timedelta(seconds=60))
    board.queue(queue("b1", 3, 900, T0))
    board.queue(queue("b2", 2, 100, T0 + timedelta(seconds=4)))
    board.queue(queue("b1", 4, 1200, T0 + timedelta(seconds=5)))  # replaces b1's older report
    board.queue(queue("b1", 9, 9999, T0, model="other"))
    assert board.waiting_tokens("m", T0 + timedelta(seconds=6)) == (6, 1300)
    assert board.waiting_tokens("m", T0 + timedelta(seconds=14)) == (6, 1300)  # b2 reported at 4 s, every 5 s
    assert board.waiting_tokens("m", T0 + timedelta(seconds=14.5)) == (4, 1200)  # b2 missed two reports


def test_workers_count_when_fresh_holding_the_model_and_not_draining() -> None:
    board = StatusBoard(max_age=timedelta(seconds=60))
    board.worker(worker("w1", T0))
    board.worker(worker("w2", T0, state="sleeping"))
    board.worker(worker("w3", T0, draining=True))
    board.worker(worker("w4", T0 - timedelta(seconds=30)))
    assert [w.worker_id for w in board.workers("m", T0 + timedelta(seconds=1))] == ["w1"]
    assert board.workers("other", T0) == []


def test_demand_counts_end_offset_growth_into_buckets() -> None:
    counter = DemandCounter(timedelta(minutes=1))
    assert counter.update("m", 100, T0 + timedelta(seconds=5)) == (0, [])  # first sight: a baseline, not arrivals
    assert counter.update("m", 130, T0 + timedelta(seconds=30)) == (30, [])
    arrived, closed = counter.update("m", 135, T0 + timedelta(seconds=65))
    assert (arrived, closed) == (5, [(T0, 30)])
    assert counter.open_bucket("m") == (T0 + timedelta(minutes=1), 5)
    # 35 requests seen over 60 s: 2100 per hour
    assert counter.per_hour("m", T0 + timedelta(seconds=65)) == pytest.approx(35 * 3600 / 60)
    # with history saying 600/h for the unwatched 59 minutes: 35 + 600 x 59/60
    assert counter.per_hour("m", T0 + timedelta(seconds=65), history_per_hour=600) == pytest.approx(35 + 590)
