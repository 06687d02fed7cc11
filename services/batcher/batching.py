"""Pure batching rules: no Kafka, no clocks of its own."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from shared.contracts import CompletionRequested


def expired(request: CompletionRequested, now: datetime) -> bool:
    return request.deadline_at is not None and request.deadline_at <= now


def unique_by_request_id(requests: list[CompletionRequested]) -> list[CompletionRequested]:
    """Drops redelivered duplicates within one poll, keeping the first of each request id."""
    seen: set[str] = set()
    kept = []
    for r in requests:
        if r.request_id not in seen:
            seen.add(r.request_id)
            kept.append(r)
    return kept


def group_into_batches(requests: list[CompletionRequested], max_batch_size: int) -> list[list[CompletionRequested]]:
    """Splits requests into per-model batches of at most ``max_batch_size``, keeping arrival order within a model."""
    by_model: dict[str, list[CompletionRequested]] = defaultdict(list)
    for r in requests:
        by_model[r.model].append(r)
    return [reqs[i : i + max_batch_size] for reqs in by_model.values() for i in range(0, len(reqs), max_batch_size)]
