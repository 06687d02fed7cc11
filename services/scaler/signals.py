"""Pure signal bookkeeping: token weight of requests, the latest batcher queue reports and worker heartbeats, and
per-model demand counting from request-topic end offsets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.contracts import BatchFormed, CompletionRequested, QueueDepthReported, WorkerStatusReported


def request_tokens(request: CompletionRequested, contexts: Mapping[str, int] | None = None) -> int:
    """Prompt plus max new tokens, the prompt estimated as the batcher does (4 characters per token and 4 of chat
    template per message: no tokenizer in the scaler); at
    most the model's context when ``contexts`` (registry max_model_len by model) has it, since its worker cuts
    max_tokens there, whatever a producer on Kafka asked for."""
    return request.token_weight(context=(contexts or {}).get(request.model))


def batch_tokens(batch: BatchFormed, contexts: Mapping[str, int] | None = None) -> tuple[int, int]:
    """(requests, tokens) in a batch."""
    return len(batch.requests), sum(request_tokens(r, contexts) for r in batch.requests)


@dataclass(frozen=True)
class TopicBacklog:
    """What waits unconsumed on one topic for one consumer group."""

    records: int
    """End offsets minus committed offsets, summed over partitions."""
    requests: float
    """Requests in those records (a batch record holds several), extrapolated from the records peeked."""
    tokens: float
    """Their token weight, extrapolated from the records peeked."""
    by_partition: dict[int, int] = field(default_factory=dict)


def extrapolate(lag: int, peeked: list[tuple[int, int]]) -> tuple[float, float]:
    """(requests, tokens) of ``lag`` records from the (requests, tokens) of the ones actually read."""
    if lag <= 0:
        return 0.0, 0.0
    if not peeked:
        return float(lag), 0.0
    scale = lag / len(peeked)
    return sum(r for r, _ in peeked) * scale, sum(t for _, t in peeked) * scale


class StatusBoard:
    """The newest QueueDepthReported per (model, batcher) and WorkerStatusReported per worker, with their age."""

    def __init__(self, max_age: timedelta) -> None:
        self.max_age = max_age
        self._queues: dict[tuple[str, str], QueueDepthReported] = {}
        self._workers: dict[str, WorkerStatusReported] = {}

    def queue(self, report: QueueDepthReported) -> None:
        self._queues[(report.model, report.batcher_id)] = report

    def worker(self, report: WorkerStatusReported) -> None:
        self._workers[report.worker_id] = report

    def _fresh(self, reported_at: datetime, interval: float, now: datetime) -> bool:
        # two missed reports mean the reporter is gone (the contract's rule), capped by max_age
        return now - reported_at <= min(self.max_age, timedelta(seconds=2 * interval))

    def heard_from_workers(self) -> bool:
        """Whether any worker heartbeat has arrived since start (workers that do not report cannot be counted)."""
        return bool(self._workers)

    def waiting_tokens(self, model: str, now: datetime) -> tuple[int, int]:
        """(requests, tokens) batchers hold for the model, summed over fresh reports."""
        fresh = [
            r
            for (m, _), r in self._queues.items()
            if m == model and self._fresh(r.reported_at, r.interval_seconds, now)
        ]
        return sum(r.waiting for r in fresh), sum(r.waiting_tokens for r in fresh)

    def workers(self, model: str, now: datetime) -> list[WorkerStatusReported]:
        """Fresh heartbeats of workers that hold the model (loading or ready) and are not draining."""
        return [
            w
            for w in self._workers.values()
            if self._fresh(w.reported_at, w.interval_seconds, now)
            and not w.draining
            and any(m.model == model and m.state in ("loading", "ready") for m in w.models)
        ]


class DemandCounter:
    """Arrivals per model from the growth of its request topic's end offsets, gathered into fixed buckets."""

    def __init__(self, bucket: timedelta) -> None:
        self.bucket = bucket
        self._last_end: dict[str, int] = {}
        self._open: dict[str, tuple[datetime, int]] = {}
        self.recent: dict[str, list[tuple[datetime, int]]] = {}

    def bucket_start(self, at: datetime) -> datetime:
        seconds = self.bucket.total_seconds()
        return datetime.fromtimestamp(at.timestamp() // seconds * seconds, tz=at.tzinfo)

    def update(self, model: str, end_offset: int, at: datetime) -> tuple[int, list[tuple[datetime, int]]]:
        """Records the end offset seen at ``at``; returns (arrivals since the last call, buckets just closed)."""
        previous = self._last_end.get(model)
        self._last_end[model] = end_offset
        arrived = max(0, end_offset - previous) if previous is not None else 0
        start = self.bucket_start(at)
        closed: list[tuple[datetime, int]] = []
        open_start, count = self._open.get(model, (start, 0))
        if open_start != start:
            closed.append((open_start, count))
            open_start, count = start, 0
        self._open[model] = (open_start, count + arrived)
        recent = self.recent.setdefault(model, [])
        recent.append((at, arrived))
        while recent and recent[0][0] < at - timedelta(hours=1):
            recent.pop(0)
        return arrived, closed

    def open_bucket(self, model: str) -> tuple[datetime, int] | None:
        return self._open.get(model)

    def per_hour(self, model: str, at: datetime, history_per_hour: float | None = None) -> float:
        """Requests over the last hour; while the scaler has watched less than an hour, the watched part is
        scaled up, blended with what PostgreSQL's history says for the rest."""
        recent = self.recent.get(model, [])
        if not recent:
            return history_per_hour or 0.0
        watched = (at - recent[0][0]).total_seconds()
        count = sum(n for _, n in recent)
        if watched >= 3600 or history_per_hour is None:
            return count * 3600 / max(watched, 60.0)
        return count + history_per_hour * (3600 - watched) / 3600
