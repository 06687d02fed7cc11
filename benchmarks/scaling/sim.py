"""Replays a demand trace against a scaling policy with a simple service model (pure; no clock, no clients).

Service model, one step of ``step_s`` seconds at a time:
- requests arrive (Poisson around the trace's rate), each weighing ``tokens_per_request`` tokens of work;
- every ready replica serves ``replica_tokens_per_second``; work waits in one FIFO backlog (like a Kafka topic);
- a replica the policy starts is paid for at once but serves only after ``startup_s`` (the load-step benchmark
  measures that on this machine); a replica it stops stops at once;
- the expected wait of a request arriving now is backlog / (ready replicas x per-replica speed); the step counts as
  "over the latency target" when that wait is longer than ``latency_target_s`` (or nothing is ready while work waits).

The policy sees what the real scaler sees: the backlog in tokens, the lag in requests, the replicas running or
starting, arrivals since the last decision, demand over the last hour, and (predictive) its own forecast, learned
online from per-minute demand buckets as the real scaler learns them from PostgreSQL.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from services.scaler.forecast import Forecast, SeasonalForecaster
from services.scaler.policy import Decision, Signals


class Policy(Protocol):
    name: str

    def decide(self, s: Signals, forecast: Forecast | None = None) -> Decision: ...


@dataclass(frozen=True)
class ServiceModel:
    step_s: float = 10.0
    tokens_per_request: float = 300.0
    replica_tokens_per_second: float = 200.0
    startup_s: float = 60.0
    latency_target_s: float = 20.0
    decide_every_s: float = 10.0


@dataclass
class Outcome:
    policy: str
    worker_seconds: float = 0.0
    seconds_over_target: float = 0.0
    requests: int = 0
    requests_over_target: int = 0
    scale_events: int = 0
    max_replicas: int = 0
    timeline: list[tuple[datetime, float, int, int, float]] = field(default_factory=list)
    """(time, arrivals per hour, replicas paid, replicas ready, expected wait s) per step."""
    forecast_abs_error: float = 0.0
    forecast_actual: float = 0.0

    @property
    def forecast_wape(self) -> float | None:
        return self.forecast_abs_error / self.forecast_actual if self.forecast_actual else None


def poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 50:  # normal approximation: plenty for a load model
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def train(forecaster: SeasonalForecaster, rate_per_hour, start: datetime, days: int, rng: random.Random) -> None:
    """Teaches a forecaster ``days`` of minute buckets of the trace (the history PostgreSQL would hold)."""
    t = start
    while t < start + timedelta(days=days):
        forecaster.observe(t, poisson(rng, rate_per_hour(t) / 60), 60)
        t += timedelta(minutes=1)


def replay(
    policy: Policy,
    rate_per_hour,
    start: datetime,
    hours: float,
    model: ServiceModel,
    rng: random.Random,
    initial_replicas: int,
    forecaster: SeasonalForecaster | None = None,
    horizon: timedelta = timedelta(minutes=20),
) -> Outcome:
    out = Outcome(policy.name)
    ready_at: list[float] = [0.0] * initial_replicas  # per replica, the second it starts serving
    backlog = 0.0
    clock = 0.0
    hour_window: deque[tuple[float, int]] = deque()
    arrivals_since_decision = 0
    minute_count, minute_start = 0, start
    next_decision = 0.0
    end = hours * 3600
    while clock < end:
        now = start + timedelta(seconds=clock)
        if forecaster is not None and now >= minute_start + timedelta(minutes=1):
            predicted = forecaster.forecast(minute_start).requests_per_hour / 60
            out.forecast_abs_error += abs(predicted - minute_count)
            out.forecast_actual += minute_count
            forecaster.observe(minute_start, minute_count, 60)
            minute_start, minute_count = minute_start + timedelta(minutes=1), 0
        arrivals = poisson(rng, rate_per_hour(now) / 3600 * model.step_s)
        minute_count += arrivals
        arrivals_since_decision += arrivals
        hour_window.append((clock, arrivals))
        while hour_window and hour_window[0][0] <= clock - 3600:
            hour_window.popleft()
        backlog += arrivals * model.tokens_per_request

        if clock >= next_decision:
            next_decision = clock + model.decide_every_s
            signals = Signals(
                model="sim",
                at=now,
                replicas=len(ready_at),
                lag_records=math.ceil(backlog / model.tokens_per_request),
                backlog_tokens=backlog,
                requests_per_hour=sum(n for _, n in hour_window) * 3600 / max(min(clock + model.step_s, 3600), 60),
                recent_requests=arrivals_since_decision,
                tokens_per_request=model.tokens_per_request,
            )
            arrivals_since_decision = 0
            forecast = forecaster.peak(now, horizon) if forecaster is not None else None
            desired = policy.decide(signals, forecast).desired
            if desired != len(ready_at):
                out.scale_events += 1
            while len(ready_at) < desired:
                ready_at.append(clock + model.startup_s)
            while len(ready_at) > desired:
                ready_at.remove(max(ready_at))  # stop the one that started last (maybe not serving yet)

        ready = sum(1 for t in ready_at if t <= clock)
        capacity = ready * model.replica_tokens_per_second * model.step_s
        backlog = max(0.0, backlog - capacity)
        wait = backlog / (ready * model.replica_tokens_per_second) if ready else (math.inf if backlog else 0.0)
        out.worker_seconds += len(ready_at) * model.step_s
        out.requests += arrivals
        if wait > model.latency_target_s:
            out.seconds_over_target += model.step_s
            out.requests_over_target += arrivals
        out.max_replicas = max(out.max_replicas, len(ready_at))
        out.timeline.append((now, rate_per_hour(now), len(ready_at), ready, min(wait, 600.0)))
        clock += model.step_s
    return out
