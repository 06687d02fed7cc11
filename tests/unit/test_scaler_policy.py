from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from services.scaler.forecast import Forecast
from services.scaler.policy import (
    Autoscaler,
    KedaLagPolicy,
    PolicyConfig,
    Signals,
    TierConfig,
    classify,
    predictive_replicas,
    reactive_replicas,
)

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
CONFIG = PolicyConfig(
    target_backlog_tokens=1000,
    replica_tokens_per_second=100,
    utilization_target=0.5,
    up_window=timedelta(seconds=20),
    down_window=timedelta(seconds=60),
    up_cooldown=timedelta(seconds=30),
    down_cooldown=timedelta(seconds=40),
    zero_after=timedelta(seconds=120),
    max_replicas=4,
)
WARM = 500.0  # requests per hour


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def sig(t: float, replicas: int, backlog: float = 0.0, rate: float = WARM, lag: int | None = None) -> Signals:
    return Signals(
        model="m",
        at=at(t),
        replicas=replicas,
        lag_records=lag if lag is not None else (1 if backlog else 0),
        backlog_tokens=backlog,
        requests_per_hour=rate,
    )


def test_tiers_follow_the_design_thresholds() -> None:
    tiers = TierConfig()
    assert classify(1001, tiers) == "hot"
    assert classify(1000, tiers) == "warm"
    assert classify(101, tiers) == "warm"
    assert classify(100, tiers) == "cold"
    assert classify(0, tiers) == "cold"


def test_reactive_replicas_is_backlog_over_target_rounded_up() -> None:
    assert reactive_replicas(sig(0, 1, backlog=0), CONFIG) == 0
    assert reactive_replicas(sig(0, 1, backlog=1), CONFIG) == 1
    assert reactive_replicas(sig(0, 1, backlog=1000), CONFIG) == 1
    assert reactive_replicas(sig(0, 1, backlog=2500), CONFIG) == 3


def test_predictive_replicas_turns_a_rate_into_replicas_with_headroom() -> None:
    # 3600 req/h = 1 req/s x 300 tokens = 300 tok/s; one replica at 50% of 100 tok/s takes 50 -> 6 replicas
    forecast = Forecast(3600, "daily", 3600, 1.0)
    assert predictive_replicas(forecast, sig(0, 1), CONFIG) == 6


def test_scale_up_waits_for_the_whole_up_window_then_respects_the_cooldown() -> None:
    scaler = Autoscaler("m", CONFIG, predictive=False)
    assert scaler.decide(sig(0, 1, backlog=500)).desired == 1
    first = scaler.decide(sig(10, 1, backlog=3000))
    assert (first.desired, first.action) == (1, "hold")  # t=0 asked for 1: within the 20 s up-window
    assert "up-window" in first.reason
    second = scaler.decide(sig(21, 1, backlog=3000))
    assert (second.desired, second.action) == (3, "scale_up")  # t=10 and t=21 both asked for 3
    assert second.reason.startswith("scale up: reactive wants 3")
    held = scaler.decide(sig(45, 3, backlog=4000))  # wants 4 for 24 s, but only 24 s since the last scale-up
    assert (held.desired, held.reason.split(":")[0]) == (3, "hold")
    assert "cooldown" in held.reason
    assert scaler.decide(sig(52, 3, backlog=4000)).desired == 4  # 31 s after the scale-up


def test_scale_down_takes_the_highest_of_the_down_window_and_waits_for_its_cooldown() -> None:
    scaler = Autoscaler("m", CONFIG, predictive=False)
    assert scaler.decide(sig(0, 3, backlog=2500)).desired == 3
    assert scaler.decide(sig(30, 3, backlog=1500)).desired == 3  # window max is still 3
    assert scaler.decide(sig(61, 3, backlog=0, lag=0)).desired == 2  # t=0 left the window; t=30 wanted 2
    d = scaler.decide(sig(80, 2, backlog=0, lag=0))
    assert d.desired == 2 and "down-window still wants 2" in d.reason  # t=30 (2) is still in [20, 80]
    d = scaler.decide(sig(95, 2, backlog=0, lag=0))  # window [35, 95] wants 1, but only 34 s since the change
    assert d.desired == 2 and "scale-down cooldown" in d.reason
    assert scaler.decide(sig(102, 2, backlog=0, lag=0)).desired == 1  # a warm model keeps one replica


def test_flapping_load_does_not_flap_replicas_but_keda_rule_does() -> None:
    ours, keda = Autoscaler("m", CONFIG, predictive=False), KedaLagPolicy("m", lag_threshold=10, max_replicas=4)
    ours_replicas, keda_replicas, changes_ours, changes_keda = 2, 2, 0, 0
    for step in range(12):
        lag = 30 if step % 2 else 0  # bursts every other 10 s
        s = sig(step * 10, ours_replicas, backlog=lag * 100, lag=lag)
        d = ours.decide(s)
        changes_ours += d.desired != ours_replicas
        ours_replicas = d.desired
        k = keda.decide(replace(s, replicas=keda_replicas))
        changes_keda += k.desired != keda_replicas
        keda_replicas = k.desired
    assert changes_keda == 12  # 0 -> 3 -> 0 -> ...
    assert changes_ours <= 2


def test_cold_model_goes_to_zero_only_after_idle_and_wakes_on_the_first_request() -> None:
    scaler = Autoscaler("m", CONFIG, predictive=False)
    cold = 10.0
    assert scaler.decide(sig(0, 1, backlog=0, rate=cold)).desired == 1  # a fresh start counts as demand
    assert scaler.decide(sig(119, 1, backlog=0, rate=cold)).desired == 1
    # idle long enough at 121 s, but the down-window still holds t=119's recommendation of 1 until 179 s
    assert scaler.decide(sig(121, 1, backlog=0, rate=cold)).desired == 1
    zero = scaler.decide(sig(180, 1, backlog=0, rate=cold))
    assert (zero.desired, zero.tier) == (0, "cold")
    assert zero.reason.startswith("scale to zero: cold and idle for 180 s")
    assert scaler.decide(sig(185, 0, rate=cold)).desired == 0
    woken = scaler.decide(sig(186, 0, backlog=300, rate=cold))  # within every cooldown: waking ignores them
    assert (woken.desired, woken.reason.split(",")[0]) == (1, "wake on demand")
    woken_by_lag_only = Autoscaler("m", CONFIG, predictive=False)
    woken_by_lag_only.decide(sig(0, 1, rate=cold))
    woken_by_lag_only.decide(sig(200, 1, rate=cold))
    assert woken_by_lag_only.decide(sig(201, 0, backlog=0, lag=1, rate=cold)).desired == 1


def test_warm_and_hot_models_never_go_to_zero_and_max_is_respected() -> None:
    scaler = Autoscaler("m", CONFIG, predictive=False)
    for t in range(0, 1000, 50):
        assert scaler.decide(sig(t, 1, rate=2000)).desired == 1
    big = Autoscaler("m", replace(CONFIG, up_window=timedelta(0)), predictive=False)
    assert big.decide(sig(0, 1, backlog=99_000)).desired == 4


def test_predictive_scales_ahead_of_the_forecast_and_falls_back_to_reactive_above_it() -> None:
    scaler = Autoscaler("m", replace(CONFIG, up_window=timedelta(0)), predictive=True)
    ahead = scaler.decide(sig(0, 1, backlog=0), Forecast(1800, "weekly", 1200, 1.5))
    # 1800 req/h x 300 tok = 150 tok/s / 50 per replica = 3, while the backlog alone wants 0
    assert (ahead.desired, ahead.predictive_replicas, ahead.reactive_replicas) == (3, 3, 0)
    assert ahead.reason.startswith("scale up: predictive wants 3")
    assert "weekly profile 1200 x 1.50" in ahead.reason
    assert ahead.forecast_per_hour == 1800
    above = scaler.decide(sig(40, 3, backlog=3900), Forecast(600, "weekly", 600, 1.0))
    assert (above.desired, above.predictive_replicas) == (4, 1)
    assert "reactive (actual above forecast)" in above.reason


def test_every_decision_carries_its_signals() -> None:
    d = Autoscaler("m", CONFIG).decide(sig(0, 2, backlog=1234, lag=7), Forecast(100, "level", None, 1.0))
    assert d.signals["backlog_tokens"] == 1234 and d.signals["lag_records"] == 7 and d.signals["replicas"] == 2
    record = d.record()
    assert record["policy"] == "predictive+reactive" and record["action"] == d.action
    assert "backlog 1234 tok, lag 7" in d.reason


def test_keda_rule_is_ceil_of_lag_over_threshold() -> None:
    keda = KedaLagPolicy("m", lag_threshold=10, min_replicas=0, max_replicas=5)
    assert [keda.decide(sig(0, 1, lag=lag)).desired for lag in (0, 1, 10, 11, 45, 1000)] == [0, 1, 1, 2, 5, 5]
