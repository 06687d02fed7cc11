"""Pure scheduling core of the batcher: which held request goes next, when a batch closes, what the workers can take.

No Kafka and no clocks of its own: callers pass ``now`` (monotonic seconds) and ``wall`` (UTC) in. Each held request
carries an opaque ``ref`` (the adapter's partition and offset) so the edge can commit once it is resolved.

Rules, per model:
- Requests wait in one queue per batching profile. Inside a queue, the next request is the head with the best
  *effective* priority class: its class, raised one class per ``aging_s`` waited, without a ceiling (so a waiting
  lower class overtakes newer higher ones and is never starved).
  Ties go to the higher original class, then to the tenant that has received the fewest tokens in that class
  (start-time fair queuing by tokens; a tenant returning from idle starts at the class's current virtual time, so it
  cannot bank credit), then to the older request.
- While workers report free room (slots and tokens), requests leave at once ("capacity"), as many as fit.
- With no fresh report at all, requests leave at once too ("no_reports"; ``without_reports="wait"`` treats that as
  saturated instead): nothing says the workers are busy, and vLLM batches continuously anyway.
- Otherwise (workers saturated) a profile's batch closes when it is full (``max_batch`` requests or
  the token budget, "full") or its oldest request has waited ``max_wait`` ("max_wait").
- A batch never exceeds its profile's ``max_batch`` nor the token budget (prompt estimate plus max new tokens), except
  a lone request larger than the budget, which goes alone rather than never.
- Requests past their deadline come back as expired (the edge tells the requester); cancelled ones as cancelled.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from shared.contracts import CompletionRequested

PRIORITY_RANK: dict[str, int] = {"interactive": 0, "batch": 1, "best_effort": 2}
PRIORITIES = tuple(PRIORITY_RANK)

DispatchReason = Literal["capacity", "no_reports", "full", "max_wait", "drain"]


@dataclass(frozen=True)
class Profile:
    name: str
    max_batch: int
    max_wait_s: float
    p95_target_s: float


@dataclass(frozen=True)
class Policy:
    profiles: dict[str, Profile]
    default_profile: str = "latency"
    model_profiles: dict[str, str] = field(default_factory=dict)
    tenant_profiles: dict[str, str] = field(default_factory=dict)
    aging_s: float = 1.0
    batch_token_budget: int = 65536
    chars_per_token: float = 4.0
    without_reports: Literal["dispatch", "wait"] = "dispatch"
    """No fresh worker report: dispatch at once (nothing says workers are saturated) or wait as if saturated."""
    cancel_memory_s: float = 300.0
    rate_window_s: float = 10.0
    model_contexts: dict[str, int] = field(default_factory=dict)
    """Each model's context (registry max_model_len): no request of it weighs more, whatever max_tokens a producer
    asked for, since its worker cuts max_tokens to what the context leaves."""

    def profile_for(self, request: CompletionRequested) -> Profile:
        name = (
            request.profile
            or (self.tenant_profiles.get(request.tenant_id) if request.tenant_id is not None else None)
            or self.model_profiles.get(request.model)
            or self.default_profile
        )
        return self.profiles[name]

    def tokens_of(self, request: CompletionRequested) -> int:
        """Prompt estimate (characters / chars_per_token, plus a few tokens of chat template per message) plus the
        most tokens it may generate, at most the model's context when it is known."""
        return request.token_weight(self.chars_per_token, context=self.model_contexts.get(request.model))


@dataclass
class Held:
    request: CompletionRequested
    ref: Hashable
    arrived: float
    tokens: int
    profile: Profile

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def tenant(self) -> str | None:
        return self.request.tenant_id

    @property
    def rank(self) -> int:
        return PRIORITY_RANK[self.request.priority]


@dataclass(frozen=True)
class Batch:
    model: str
    profile: str
    reason: DispatchReason
    items: list[Held]

    @property
    def tokens(self) -> int:
        return sum(h.tokens for h in self.items)


@dataclass(frozen=True)
class Capacity:
    """Room the model's workers have now; ``known`` is False when no fresh report exists (treated as saturated)."""

    free_slots: int
    free_tokens: int
    known: bool

    @property
    def free(self) -> bool:
        return self.free_slots > 0 and self.free_tokens > 0


NO_REPORTS = Capacity(0, 0, known=False)
UNBOUNDED = Capacity(2**62, 2**62, known=False)


@dataclass(frozen=True)
class WorkerReport:
    worker_id: str
    free_slots: int
    free_tokens: int
    waiting: int
    draining: bool
    interval_s: float
    made_at: float
    """Monotonic instant the report describes (receipt time minus its age)."""


class CapacityTracker:
    """One model's worker room: the fresh reports minus what this batcher dispatched since the oldest of them.

    Counting a dispatch against every fresh report may count it twice once a newer report already reflects it: the
    error only makes the batcher wait a little more, never overfill workers."""

    def __init__(self) -> None:
        self._reports: dict[str, WorkerReport] = {}
        self._charges: deque[tuple[float, int, int]] = deque()

    def report(self, report: WorkerReport) -> None:
        known = self._reports.get(report.worker_id)
        if known is None or known.made_at <= report.made_at:
            self._reports[report.worker_id] = report

    def charge(self, now: float, slots: int, tokens: int) -> None:
        self._charges.append((now, slots, tokens))

    def fresh(self, now: float) -> list[WorkerReport]:
        stale = [w for w, r in self._reports.items() if now - r.made_at > 2 * r.interval_s]
        for w in stale:
            del self._reports[w]
        return list(self._reports.values())

    def capacity(self, now: float) -> Capacity:
        fresh = self.fresh(now)
        if not fresh:
            self._charges.clear()
            return NO_REPORTS
        since = min(r.made_at for r in fresh)
        while self._charges and self._charges[0][0] < since:
            self._charges.popleft()
        serving = [r for r in fresh if not r.draining]
        slots = sum(r.free_slots for r in serving) - sum(c[1] for c in self._charges)
        tokens = sum(r.free_tokens for r in serving) - sum(c[2] for c in self._charges)
        return Capacity(max(0, slots), max(0, tokens), known=True)

    def workers_waiting(self, now: float) -> int:
        return sum(r.waiting for r in self.fresh(now))


class _ClassQueue:
    """One priority class of one profile: a FIFO per tenant and each tenant's virtual time (tokens received)."""

    def __init__(self) -> None:
        self.by_tenant: dict[str | None, deque[Held]] = {}
        self.vtime: dict[str | None, float] = {}
        self.clock = 0.0

    def push(self, held: Held) -> None:
        queue = self.by_tenant.get(held.tenant)
        if queue is None:
            queue = self.by_tenant[held.tenant] = deque()
            self.vtime[held.tenant] = max(self.vtime.get(held.tenant, 0.0), self.clock)
        queue.append(held)

    def heads(self) -> Iterable[tuple[float, Held]]:
        for tenant, queue in self.by_tenant.items():
            yield self.vtime[tenant], queue[0]

    def pop(self, tenant: str | None) -> Held:
        queue = self.by_tenant[tenant]
        held = queue.popleft()
        self.clock = self.vtime[tenant]
        self.vtime[tenant] += held.tokens
        if not queue:
            del self.by_tenant[tenant]
        return held

    def remove(self, keep: Callable[[Held], bool]) -> list[Held]:
        removed = []
        for tenant in list(self.by_tenant):
            queue = self.by_tenant[tenant]
            removed += [h for h in queue if not keep(h)]
            queue = deque(h for h in queue if keep(h))
            if queue:
                self.by_tenant[tenant] = queue
            else:
                del self.by_tenant[tenant]
        return removed

    def items(self) -> Iterable[Held]:
        for queue in self.by_tenant.values():
            yield from queue


class _ProfileQueue:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.classes = [_ClassQueue() for _ in PRIORITIES]
        self.count = 0
        self.tokens = 0

    def push(self, held: Held) -> None:
        self.classes[held.rank].push(held)
        self.count += 1
        self.tokens += held.tokens

    def best(self, now: float, aging_s: float) -> tuple[tuple[float, ...], int, Held] | None:
        best = None
        for rank, cq in enumerate(self.classes):
            for vtime, head in cq.heads():
                promoted = int((now - head.arrived) / aging_s) if aging_s > 0 else 0
                key = (rank - promoted, rank, vtime, head.arrived)
                if best is None or key < best[0]:
                    best = (key, rank, head)
        return best

    def pop_best(self, now: float, aging_s: float) -> Held:
        best = self.best(now, aging_s)
        assert best is not None
        _, rank, head = best
        self.count -= 1
        self.tokens -= head.tokens
        return self.classes[rank].pop(head.tenant)

    def remove(self, keep: Callable[[Held], bool]) -> list[Held]:
        removed = [h for cq in self.classes for h in cq.remove(keep)]
        self.count -= len(removed)
        self.tokens -= sum(h.tokens for h in removed)
        return removed

    def oldest(self) -> float | None:
        return min((cq_head.arrived for cq in self.classes for _, cq_head in cq.heads()), default=None)

    def items(self) -> Iterable[Held]:
        for cq in self.classes:
            yield from cq.items()


@dataclass(frozen=True)
class QueueDepth:
    waiting: int
    waiting_tokens: int
    waiting_by_priority: dict[str, int]
    expected_wait_s: float


class ModelScheduler:
    """The held requests of one model and the rules that release them."""

    def __init__(self, model: str, policy: Policy) -> None:
        self.model = model
        self.policy = policy
        self.capacity = CapacityTracker()
        self._queues = {name: _ProfileQueue(p) for name, p in policy.profiles.items()}
        self._held_ids: dict[str, Hashable] = {}
        self._dispatched: deque[tuple[float, int]] = deque()

    def __len__(self) -> int:
        return len(self._held_ids)

    def holds(self, request_id: str) -> bool:
        return request_id in self._held_ids

    def ref_of(self, request_id: str) -> Hashable | None:
        return self._held_ids.get(request_id)

    def add(self, request: CompletionRequested, ref: Hashable, now: float) -> Held:
        profile = self.policy.profile_for(request)
        held = Held(request, ref, now, self.policy.tokens_of(request), profile)
        self._queues[profile.name].push(held)
        self._held_ids[request.request_id] = ref
        return held

    def restore(self, items: Iterable[Held]) -> None:
        """Puts back requests whose hand-over failed, with their original arrival time."""
        for held in items:
            self._queues[held.profile.name].push(held)
            self._held_ids[held.request_id] = held.ref

    def remove(self, keep: Callable[[Held], bool]) -> list[Held]:
        removed = [h for q in self._queues.values() for h in q.remove(keep)]
        for h in removed:
            self._held_ids.pop(h.request_id, None)
        return removed

    def expire(self, wall: datetime) -> list[Held]:
        return self.remove(lambda h: h.request.deadline_at is None or h.request.deadline_at > wall)

    def release(self, now: float) -> list[Batch]:
        """Batches due now, in dispatch order; each is charged against the workers' room."""
        batches: list[Batch] = []
        budget = self.policy.batch_token_budget
        capacity = self._room(now)
        while capacity.free:
            candidates = [(b[0], q) for q in self._queues.values() if (b := q.best(now, self.policy.aging_s))]
            if not candidates:
                break
            _, queue = min(candidates, key=lambda c: c[0])
            room = min(budget, capacity.free_tokens)
            reason: DispatchReason = "capacity" if capacity.known else "no_reports"
            batch = self._form(queue, min(queue.profile.max_batch, capacity.free_slots), room, now, reason)
            if batch is None:
                break
            batches.append(batch)
            capacity = self._room(now)
        for queue in self._queues.values():
            while queue.count and (queue.count >= queue.profile.max_batch or queue.tokens >= budget):
                batches.append(self._must_form(queue, now, "full"))
            while (oldest := queue.oldest()) is not None and now - oldest >= queue.profile.max_wait_s:
                batches.append(self._must_form(queue, now, "max_wait"))
        return batches

    def _room(self, now: float) -> Capacity:
        capacity = self.capacity.capacity(now)
        if not capacity.known and self.policy.without_reports == "dispatch":
            return UNBOUNDED
        return capacity

    def drain(self, now: float) -> list[Batch]:
        """Everything held, in batches (shutdown)."""
        return [self._must_form(q, now, "drain") for q in self._queues.values() for _ in range(q.count) if q.count]

    def _must_form(self, queue: _ProfileQueue, now: float, reason: DispatchReason) -> Batch:
        batch = self._form(queue, queue.profile.max_batch, self.policy.batch_token_budget, now, reason, force=True)
        assert batch is not None
        return batch

    def _form(
        self, queue: _ProfileQueue, most: int, room: int, now: float, reason: DispatchReason, force: bool = False
    ) -> Batch | None:
        items: list[Held] = []
        tokens = 0
        while len(items) < most and (best := queue.best(now, self.policy.aging_s)):
            head = best[2]
            if tokens + head.tokens > room and (items or not force):
                break
            items.append(queue.pop_best(now, self.policy.aging_s))
            tokens += head.tokens
        if not items:
            return None
        for h in items:
            self._held_ids.pop(h.request_id, None)
        self.capacity.charge(now, len(items), tokens)
        self._dispatched.append((now, len(items)))
        return Batch(self.model, queue.profile.name, reason, items)

    def next_due(self, now: float) -> float | None:
        """When the oldest request of some profile reaches its wait limit (for the caller's timer)."""
        due = [oldest + q.profile.max_wait_s for q in self._queues.values() if (oldest := q.oldest()) is not None]
        return min(due, default=None)

    def service_rate(self, now: float) -> float:
        """Requests dispatched per second over the recent window."""
        window = self.policy.rate_window_s
        while self._dispatched and self._dispatched[0][0] < now - window:
            self._dispatched.popleft()
        return sum(n for _, n in self._dispatched) / window

    def depth(self, now: float) -> QueueDepth:
        """What waits here, and how long a request arriving now should expect to wait before it is generating: the
        requests ahead of it (held here plus those the workers report queued) over the observed dispatch rate."""
        items = [h for q in self._queues.values() for h in q.items()]
        by_priority = dict.fromkeys(PRIORITIES, 0)
        for h in items:
            by_priority[h.request.priority] += 1
        ahead = len(items) + self.capacity.workers_waiting(now)
        rate = self.service_rate(now)
        if ahead == 0:
            expected = 0.0
        elif rate > 0:
            expected = ahead / rate
        else:
            expected = max(q.profile.max_wait_s for q in self._queues.values() if q.count) if items else 0.0
        return QueueDepth(len(items), sum(h.tokens for h in items), by_priority, expected)

    def held(self) -> list[Held]:
        return [h for q in self._queues.values() for h in q.items()]


class CancelledIds:
    """Request ids cancelled recently, so a cancellation read before its request still drops it."""

    def __init__(self, memory_s: float) -> None:
        self._memory_s = memory_s
        self._ids: dict[str, float] = {}

    def add(self, request_id: str, now: float) -> None:
        self._ids[request_id] = now
        while self._ids:
            oldest, at = next(iter(self._ids.items()))
            if now - at <= self._memory_s:
                break
            del self._ids[oldest]

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._ids
