"""Scaling policies: pure functions of signals and time (no clients, no clock of their own).

- ``Autoscaler`` is ferry's policy. Its reactive part wants enough replicas to clear the token-weighted backlog within
  the latency target (``ceil(backlog_tokens / target_backlog_tokens)``); its predictive part (when a forecast is given)
  wants enough replicas for the forecast peak over the next ``horizon``. The larger wins, so actual demand above the
  forecast falls back to reactive. Recommendations then pass HPA-style stabilization windows (scale up only to what
  the whole up-window asked for, scale down only to the highest the down-window asked for), separate scale-up and
  scale-down cooldowns, min/max replicas per tier, scale-to-zero for cold models after an idle period, and an
  immediate wake-up (no window, no cooldown) when a model at zero gets a request.
- ``KedaLagPolicy`` is the baseline KEDA's Kafka scaler applies: ``ceil(total lag / lagThreshold)``, no window.

Every ``Decision`` carries its reason: the signals, the forecast and which rule set the number.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from services.scaler.forecast import Forecast

Tier = Literal["hot", "warm", "cold"]


@dataclass(frozen=True)
class TierConfig:
    hot_above: float = 1000.0
    """Requests per hour above which a model is hot."""
    cold_at_most: float = 100.0
    """Requests per hour at or below which a model is cold (warm in between)."""
    min_replicas: dict[str, int] = field(default_factory=lambda: {"hot": 1, "warm": 1, "cold": 0})
    """Replicas kept per tier whatever the backlog: cold models may go to zero."""


def classify(requests_per_hour: float, config: TierConfig) -> Tier:
    if requests_per_hour > config.hot_above:
        return "hot"
    if requests_per_hour > config.cold_at_most:
        return "warm"
    return "cold"


@dataclass(frozen=True)
class PolicyConfig:
    target_backlog_tokens: float = 4000.0
    """Backlog (prompt plus max new tokens) one replica should hold at most: its tokens/s times the latency target."""
    replica_tokens_per_second: float = 200.0
    """Tokens per second one replica serves; turns a forecast rate into replicas."""
    utilization_target: float = 0.8
    """Predictive sizing leaves this much headroom: replicas = forecast load / (capacity x utilization_target)."""
    horizon: timedelta = timedelta(minutes=20)
    """How far ahead the predictive part looks (scale ahead of the forecast peak in this window)."""
    up_window: timedelta = timedelta(seconds=30)
    """Scale up only to the lowest recommendation of this window (demand must persist)."""
    down_window: timedelta = timedelta(minutes=5)
    """Scale down only to the highest recommendation of this window."""
    up_cooldown: timedelta = timedelta(seconds=30)
    """No scale-up within this long after the previous scale-up (new replicas need time to start)."""
    down_cooldown: timedelta = timedelta(minutes=2)
    """No scale-down within this long after any change."""
    zero_after: timedelta = timedelta(minutes=10)
    """A cold model goes to zero replicas only after this long without demand."""
    min_replicas: int | None = None
    """Floor for this model; unset means its tier's floor."""
    max_replicas: int = 3
    """Ceiling for this model (more consumers than its batch topic's partitions would sit idle)."""
    tiers: TierConfig = field(default_factory=TierConfig)


@dataclass(frozen=True)
class Signals:
    """What the scaler knows about one model at one instant."""

    model: str
    at: datetime
    replicas: int
    """Replicas running or starting (draining ones excluded)."""
    lag_records: int = 0
    """Unconsumed records of the model's request and batch topics (end offsets minus committed offsets)."""
    backlog_tokens: float = 0.0
    """Token weight of that lag plus what batchers report waiting (prompt plus max new tokens)."""
    requests_per_hour: float = 0.0
    """Actual demand over the last hour (tiers)."""
    recent_requests: int = 0
    """Requests that arrived since the previous decision (demand present, wake-up)."""
    tokens_per_request: float = 300.0
    """Average tokens (prompt plus max new) of a request, for turning a forecast rate into load."""


@dataclass(frozen=True)
class Decision:
    model: str
    at: datetime
    policy: str
    tier: Tier
    current: int
    desired: int
    reason: str
    signals: dict[str, object]
    forecast_per_hour: float | None = None
    reactive_replicas: int | None = None
    predictive_replicas: int | None = None

    @property
    def action(self) -> str:
        if self.desired > self.current:
            return "scale_up"
        if self.desired < self.current:
            return "scale_down"
        return "hold"

    def record(self) -> dict[str, object]:
        return {"action": self.action, **asdict(self), "at": self.at.isoformat()}


def reactive_replicas(s: Signals, c: PolicyConfig) -> int:
    return math.ceil(s.backlog_tokens / c.target_backlog_tokens) if s.backlog_tokens > 0 else 0


def predictive_replicas(forecast: Forecast, s: Signals, c: PolicyConfig) -> int:
    load = forecast.requests_per_hour / 3600 * s.tokens_per_request
    return math.ceil(load / (c.replica_tokens_per_second * c.utilization_target)) if load > 0 else 0


class Autoscaler:
    """ferry's policy for one model; keeps the recommendation history and the times of the last changes."""

    def __init__(self, model: str, config: PolicyConfig, predictive: bool = True) -> None:
        self.model = model
        self.config = config
        self.predictive = predictive
        self._recommendations: deque[tuple[datetime, int]] = deque()
        self._last_up: datetime | None = None
        self._last_change: datetime | None = None
        self._last_demand: datetime | None = None

    @property
    def name(self) -> str:
        return "predictive+reactive" if self.predictive else "reactive"

    def decide(self, s: Signals, forecast: Forecast | None = None) -> Decision:
        c = self.config
        tier = classify(s.requests_per_hour, c.tiers)
        demand = s.lag_records > 0 or s.backlog_tokens > 0 or s.recent_requests > 0
        if demand or self._last_demand is None:
            self._last_demand = s.at  # a fresh start counts as demand, so nothing goes to zero at once
        reactive = reactive_replicas(s, c)
        predictive = predictive_replicas(forecast, s, c) if self.predictive and forecast is not None else None
        raw, source = reactive, "reactive"
        if predictive is not None and predictive > reactive:
            raw, source = predictive, "predictive"
        elif predictive is not None and reactive > predictive:
            source = "reactive (actual above forecast)"
        lo = c.min_replicas if c.min_replicas is not None else c.tiers.min_replicas[tier]
        hi = c.max_replicas
        idle_for = s.at - self._last_demand
        if lo == 0 and s.replicas > 0 and idle_for < c.zero_after:
            lo = 1  # a cold model keeps its replica until it has been idle for zero_after
        if demand:
            lo = max(lo, 1)
        hi = max(hi, lo)
        wanted = min(hi, max(lo, raw))
        self._recommendations.append((s.at, wanted))
        keep = max(c.up_window, c.down_window)
        while self._recommendations and self._recommendations[0][0] < s.at - keep:
            self._recommendations.popleft()

        facts = (
            f"backlog {s.backlog_tokens:.0f} tok, lag {s.lag_records}, {s.requests_per_hour:.0f} req/h ({tier}); "
            f"reactive {reactive}"
            + (f", predictive {predictive} for {forecast.explain()}" if predictive is not None and forecast else "")
            + f"; bounds {lo}..{hi}"
        )
        desired, rule = self._stabilize(s, wanted, demand, source)
        if desired != s.replicas:
            if desired > s.replicas:
                self._last_up = s.at
            self._last_change = s.at
        return Decision(
            model=s.model,
            at=s.at,
            policy=self.name,
            tier=tier,
            current=s.replicas,
            desired=desired,
            reason=f"{rule}: {facts}",
            signals=_signal_dict(s),
            forecast_per_hour=forecast.requests_per_hour if forecast is not None and self.predictive else None,
            reactive_replicas=reactive,
            predictive_replicas=predictive,
        )

    def _stabilize(self, s: Signals, wanted: int, demand: bool, source: str) -> tuple[int, str]:
        c, current = self.config, s.replicas
        if current == 0 and wanted > 0 and demand:
            return wanted, f"wake on demand, {source} wants {wanted}"
        if wanted > current:
            in_window = [r for t, r in self._recommendations if t >= s.at - c.up_window]
            target = max(current, min(in_window))
            if target == current:
                return current, f"hold: {source} wants {wanted}, not yet for the whole up-window"
            if self._last_up is not None and s.at - self._last_up < c.up_cooldown:
                return current, f"hold: {source} wants {wanted}, scale-up cooldown"
            return target, f"scale up: {source} wants {wanted}"
        if wanted < current:
            in_window = [r for t, r in self._recommendations if t >= s.at - c.down_window]
            target = min(current, max(in_window))
            if target == current:
                return current, f"hold: {source} wants {wanted}, down-window still wants {current}"
            if self._last_change is not None and s.at - self._last_change < c.down_cooldown:
                return current, f"hold: {source} wants {wanted}, scale-down cooldown"
            if target == 0:
                idle = (s.at - (self._last_demand or s.at)).total_seconds()
                return 0, f"scale to zero: cold and idle for {idle:.0f} s"
            return target, f"scale down: {source} wants {wanted}"
        return current, f"hold: {source} wants {wanted}"


class KedaLagPolicy:
    """KEDA's Kafka scaler rule: replicas = ceil(total lag / lagThreshold), clamped; no window, no cooldown."""

    name = "keda-lag"

    def __init__(self, model: str, lag_threshold: int, min_replicas: int = 0, max_replicas: int = 3) -> None:
        self.model = model
        self.lag_threshold = lag_threshold
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas

    def decide(self, s: Signals, forecast: Forecast | None = None) -> Decision:
        wanted = math.ceil(s.lag_records / self.lag_threshold) if s.lag_records > 0 else 0
        desired = min(self.max_replicas, max(self.min_replicas, wanted))
        return Decision(
            model=s.model,
            at=s.at,
            policy=self.name,
            tier="warm",
            current=s.replicas,
            desired=desired,
            reason=f"ceil(lag {s.lag_records} / {self.lag_threshold}) = {wanted}, bounds "
            f"{self.min_replicas}..{self.max_replicas}",
            signals=_signal_dict(s),
        )


def _signal_dict(s: Signals) -> dict[str, object]:
    return {
        "replicas": s.replicas,
        "lag_records": s.lag_records,
        "backlog_tokens": round(s.backlog_tokens, 1),
        "requests_per_hour": round(s.requests_per_hour, 1),
        "recent_requests": s.recent_requests,
        "tokens_per_request": round(s.tokens_per_request, 1),
    }
