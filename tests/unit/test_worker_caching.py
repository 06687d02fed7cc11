from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.worker.caching import DoesNotFit, Resident, TierPolicy, evictions_to_fit, plan_tiers

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MiB = 1 << 20


def test_tiers_follow_the_design_thresholds() -> None:
    policy = TierPolicy()
    plans = {p.model: p for p in plan_tiers({"a": 1001, "b": 1000, "c": 101, "d": 100, "e": 0}, policy)}
    assert {m: p.tier for m, p in plans.items()} == {"a": "hot", "b": "warm", "c": "warm", "d": "cold", "e": "cold"}
    assert [plans[m].replicas for m in "abde"] == [3, 2, 0, 0]


def test_thresholds_and_replicas_are_settings() -> None:
    policy = TierPolicy(hot_above=50, warm_above=5, hot_replicas=1, warm_replicas=1, cold_replicas=1)
    (plan,) = plan_tiers({"m": 60}, policy)
    assert (plan.tier, plan.replicas) == ("hot", 1)
    assert policy.tier(5) == "cold" and policy.tier(6) == "warm"


def test_nothing_is_evicted_when_the_model_fits() -> None:
    residents = [Resident("a", 100 * MiB, "warm", T0)]
    assert evictions_to_fit(residents, 100 * MiB, budget_bytes=200 * MiB) == []


def test_the_least_recently_used_warm_model_goes_first() -> None:
    residents = [
        Resident("recent", 100 * MiB, "warm", T0 + timedelta(minutes=5)),
        Resident("old", 100 * MiB, "warm", T0),
        Resident("hot-oldest", 100 * MiB, "hot", T0 - timedelta(hours=1)),
    ]
    assert evictions_to_fit(residents, 100 * MiB, budget_bytes=300 * MiB) == ["old"]
    assert evictions_to_fit(residents, 200 * MiB, budget_bytes=300 * MiB) == ["old", "recent"]


def test_hot_and_busy_models_are_never_evicted() -> None:
    residents = [Resident("hot", 100 * MiB, "hot", T0), Resident("busy", 100 * MiB, "warm", T0, busy=True)]
    with pytest.raises(DoesNotFit):
        evictions_to_fit(residents, 50 * MiB, budget_bytes=200 * MiB)


def test_the_hourly_rate_slides_over_the_previous_hour() -> None:
    from services.worker.caching import hourly_rate

    assert hourly_rate(previous_hour=600, current_hour=50, fraction_elapsed=0.25) == 50 + 450
    assert hourly_rate(previous_hour=600, current_hour=900, fraction_elapsed=1.0) == 900
