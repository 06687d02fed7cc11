"""How the ingress writes rate-limit reset times (Go's duration notation, as OpenAI's x-ratelimit-reset-* headers), and
the limits a batch's requests are checked against."""

from __future__ import annotations

import pytest

from services.ingress.rate_limits import batch_limits, go_duration
from services.ingress.tenants import Tenant


@pytest.mark.parametrize(
    ("ms", "written"),
    [(0, "0s"), (20, "20ms"), (999, "999ms"), (1000, "1s"), (1500, "1.5s"), (45_000, "45s"), (60_000, "1m0s"),
     (105_000, "1m45s"), (61_234, "1m1.234s"), (119_999, "1m59.999s")],
)  # fmt: skip
def test_reset_times_are_written_as_openai_writes_them(ms: int, written: str) -> None:
    assert go_duration(ms) == written


def test_a_batch_takes_its_share_of_each_per_minute_limit_and_the_whole_quota() -> None:
    tenant = Tenant("acme", requests_per_minute=10, tokens_per_minute=1000, monthly_token_quota=5000, retention_days=1)
    limited = batch_limits(tenant, 0.5, tokens=100)
    assert (limited.requests_per_minute, limited.tokens_per_minute) == (5, 500)
    assert limited.monthly_token_quota == 5000 and limited.retention_days == 1 and limited.id == "acme"
    assert batch_limits(tenant, 0.05, tokens=10).requests_per_minute == 1  # never none at all


def test_a_batch_request_larger_than_its_share_still_fits_the_whole_limit() -> None:
    tenant = Tenant("acme", requests_per_minute=10, tokens_per_minute=1000)
    assert batch_limits(tenant, 0.5, tokens=800).tokens_per_minute == 800  # it runs once the minute holds little
    assert batch_limits(tenant, 0.5, tokens=1500).tokens_per_minute == 1000  # the whole limit refuses it, as over HTTP


def test_limits_the_tenant_does_not_have_stay_unlimited() -> None:
    limited = batch_limits(Tenant("acme"), 0.5, tokens=100)
    assert (limited.requests_per_minute, limited.tokens_per_minute) == (None, None)
