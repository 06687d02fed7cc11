from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime

from benchmarks.scaling.sim import ServiceModel, poisson, replay
from benchmarks.scaling.trace import DailyTrace
from services.scaler.forecast import Forecast
from services.scaler.policy import Decision, Signals

T0 = datetime(2026, 10, 19, tzinfo=UTC)


@dataclass
class Fixed:
    replicas: int
    name: str = "fixed"

    def decide(self, s: Signals, forecast: Forecast | None = None) -> Decision:
        return Decision(s.model, s.at, self.name, "warm", s.replicas, self.replicas, "fixed", {})


class NoRandom(random.Random):
    """Poisson draws with a mean above 50 become the mean exactly (gauss returns mu)."""

    def gauss(self, mu: float = 0.0, sigma: float = 1.0) -> float:
        return mu


def test_cost_is_replica_seconds_paid_from_the_start_of_each_replica() -> None:
    model = ServiceModel(step_s=10, tokens_per_request=100, replica_tokens_per_second=100, startup_s=30)
    # 36000 req/h = 100 per 10 s step = 10000 tokens per step; 3 replicas serve 3000 per step: overloaded
    out = replay(Fixed(3), lambda t: 36000, T0, 1, model, NoRandom(1), initial_replicas=1)
    assert out.worker_seconds == 3 * 3600  # the 2 new replicas are paid while starting
    assert out.requests == 100 * 360
    assert out.seconds_over_target == 3600  # never keeps up
    assert out.scale_events == 1 and out.max_replicas == 3


def test_enough_replicas_keep_the_wait_under_target() -> None:
    model = ServiceModel(step_s=10, tokens_per_request=100, replica_tokens_per_second=100, latency_target_s=5)
    # 100 requests x 100 tokens per step = 1000 tokens/s; 10 replicas serve exactly that, 11 leave headroom
    out = replay(Fixed(11), lambda t: 36000, T0, 1, model, NoRandom(1), initial_replicas=11)
    assert out.seconds_over_target == 0 and out.requests_over_target == 0
    assert {wait for *_, wait in out.timeline} == {0.0}


def test_trace_has_a_morning_ramp_a_spike_and_quiet_weekends() -> None:
    spike = datetime(2026, 10, 19, 14, tzinfo=UTC)
    trace = DailyTrace(night_per_hour=100, peak_per_hour=1000, spike_at=spike, spike_factor=3)
    assert trace(T0.replace(hour=3)) == 100
    assert trace(T0.replace(hour=8, minute=15)) == 550  # halfway up the 07:00-09:30 ramp
    assert trace(T0.replace(hour=9, minute=30)) == 1000
    no_spike = DailyTrace(night_per_hour=100, peak_per_hour=1000)
    assert trace(spike.replace(minute=10)) == 3 * no_spike(spike.replace(minute=10))
    assert trace(spike.replace(minute=30)) == no_spike(spike.replace(minute=30))  # 30 minutes long
    assert trace(datetime(2026, 10, 24, 3, tzinfo=UTC)) == 40  # Saturday night


def test_poisson_has_the_mean_it_is_asked_for() -> None:
    rng = random.Random(3)
    for mean in (0.5, 4.0, 200.0):
        draws = [poisson(rng, mean) for _ in range(4000)]
        assert abs(sum(draws) / len(draws) - mean) < 0.05 * mean + 0.05
    assert poisson(rng, 0) == 0
