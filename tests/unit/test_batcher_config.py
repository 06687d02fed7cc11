from __future__ import annotations

import pytest

from services.batcher.config import BatcherSettings


def test_profiles_default_to_the_design_and_each_field_can_be_set_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_BATCHER_THROUGHPUT__MAX_WAIT_MS", "120")
    monkeypatch.setenv("FERRY_BATCHER_TENANT_PROFILES", '{"acme": "cost"}')
    policy = BatcherSettings().policy()
    latency, throughput, cost = (policy.profiles[n] for n in ("latency", "throughput", "cost"))
    assert (latency.max_batch, latency.max_wait_s, latency.p95_target_s) == (8, 0.05, 2.0)
    assert (throughput.max_batch, throughput.max_wait_s, throughput.p95_target_s) == (32, 0.12, 5.0)
    assert (cost.max_batch, cost.max_wait_s, cost.p95_target_s) == (64, 0.5, 8.0)
    assert policy.tenant_profiles == {"acme": "cost"}


def test_an_unknown_profile_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_BATCHER_DEFAULT_PROFILE", "fastest")
    with pytest.raises(ValueError, match="default_profile"):
        BatcherSettings()
