"""Hot / warm / cold model caching, as pure rules: which tier a model's demand puts it in, and which loaded models a
worker evicts to fit another within its memory budget. No clients here; the worker and the CLI feed them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

Tier = Literal["hot", "warm", "cold"]


@dataclass(frozen=True)
class TierPolicy:
    """Thresholds in requests per hour and the replicas each tier calls for (the design's numbers by default)."""

    hot_above: float = 1000
    warm_above: float = 100
    hot_replicas: int = 3
    warm_replicas: int = 2
    cold_replicas: int = 0

    def tier(self, requests_per_hour: float) -> Tier:
        """More than ``hot_above`` is hot, more than ``warm_above`` warm, the rest (``warm_above`` or fewer) cold."""
        if requests_per_hour > self.hot_above:
            return "hot"
        if requests_per_hour > self.warm_above:
            return "warm"
        return "cold"

    def replicas(self, tier: Tier) -> int:
        return {"hot": self.hot_replicas, "warm": self.warm_replicas, "cold": self.cold_replicas}[tier]


@dataclass(frozen=True)
class TierPlan:
    model: str
    tier: Tier
    requests_per_hour: float
    replicas: int


def plan_tiers(demand: dict[str, float], policy: TierPolicy) -> list[TierPlan]:
    """Tiers for every model from its observed requests per hour (a model with no demand is cold)."""
    return [
        TierPlan(model, tier, rate, policy.replicas(tier))
        for model, rate in sorted(demand.items())
        for tier in [policy.tier(rate)]
    ]


@dataclass(frozen=True)
class Resident:
    """A model a worker holds."""

    model: str
    memory_bytes: int
    tier: Tier
    last_used_at: datetime
    busy: bool = False  # requests are generating on it: never evicted under them


class DoesNotFit(Exception):
    """The model cannot be loaded without evicting hot or busy models (or it is larger than the whole budget)."""


def evictions_to_fit(residents: list[Resident], memory_bytes: int, budget_bytes: int) -> list[str]:
    """Which models to unload, least recently used first, so that a model of ``memory_bytes`` fits in the budget.
    Only idle warm and cold models are candidates: hot models stay loaded."""
    free = budget_bytes - sum(r.memory_bytes for r in residents)
    if free >= memory_bytes:
        return []
    evicted: list[str] = []
    for resident in sorted(residents, key=lambda r: r.last_used_at):
        if resident.tier == "hot" or resident.busy:
            continue
        evicted.append(resident.model)
        free += resident.memory_bytes
        if free >= memory_bytes:
            return evicted
    raise DoesNotFit(
        f"{memory_bytes} bytes do not fit in a budget of {budget_bytes} bytes without evicting hot or busy models"
    )


def hourly_rate(previous_hour: int, current_hour: int, fraction_elapsed: float) -> float:
    """Requests in the last 60 minutes from hourly buckets (a sliding window): all of the current hour so far, plus the
    part of the previous hour that is still inside the window, assuming it was spread evenly."""
    return current_hour + previous_hour * (1.0 - min(max(fraction_elapsed, 0.0), 1.0))
