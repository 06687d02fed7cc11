"""The tenant rate limiter against real Redis: sliding windows, settlement, quotas, and two limiters sharing state."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from services.ingress.rate_limits import RateLimiter
from services.ingress.tenants import Tenant
from shared.settings import CommonSettings

T0 = datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)  # the start of a one-minute window


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(CommonSettings().redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:8]}."


async def test_requests_per_minute_slide_instead_of_resetting(redis: Redis, namespace: str) -> None:
    limiter = RateLimiter(redis, namespace)
    tenant = Tenant(id="t", requests_per_minute=10)
    for i in range(10):
        assert (await limiter.admit(tenant, 1, T0 + timedelta(seconds=i))).allowed
    refused = await limiter.admit(tenant, 1, T0 + timedelta(seconds=30))
    assert not refused.allowed and refused.limit == "requests"
    assert refused.retry_after_s is not None and 30 <= refused.retry_after_s <= 42
    # 15 s into the next window, 3/4 of the previous window's 10 still count: 7.5 + 1 <= 10, then 8.5 + 1, not 9.5 + 1
    later = T0 + timedelta(seconds=75)
    assert (await limiter.admit(tenant, 1, later)).allowed
    assert (await limiter.admit(tenant, 1, later)).allowed
    assert not (await limiter.admit(tenant, 1, later)).allowed


async def test_two_limiters_share_one_count(redis: Redis, namespace: str) -> None:
    a, b = RateLimiter(redis, namespace), RateLimiter(redis, namespace)
    tenant = Tenant(id="t", requests_per_minute=3)
    results = [await (a if i % 2 else b).admit(tenant, 1, T0) for i in range(5)]
    assert [r.allowed for r in results] == [True, True, True, False, False]


async def test_tokens_are_settled_to_the_real_count(redis: Redis, namespace: str) -> None:
    limiter = RateLimiter(redis, namespace)
    tenant = Tenant(id="t", tokens_per_minute=1000)
    first = await limiter.admit(tenant, 900, T0)
    assert first.allowed and not (await limiter.admit(tenant, 200, T0)).allowed
    assert first.charge is not None
    await limiter.settle(first.charge, 300)  # the request used 300 of the 900 it could have
    assert (await limiter.admit(tenant, 700, T0)).allowed
    too_big = await limiter.admit(tenant, 1001, T0)
    assert not too_big.allowed and too_big.retry_after_s is None


async def test_a_charge_two_instances_may_settle_is_settled_once(redis: Redis, namespace: str) -> None:
    asked, took_over = RateLimiter(redis, namespace), RateLimiter(redis, namespace)
    tenant = Tenant(id="t", monthly_token_quota=10_000)
    admitted = await asked.admit(tenant, 900, T0, "resp_1", T0 + timedelta(minutes=5))
    assert admitted.charge is not None
    charge = admitted.charge  # a background response's: kept open until settled
    await asked.settle(charge, 300)
    # the instance that asked died before storing the response's end: the one that took it over settles it again
    await took_over.settle(charge, 300)
    assert await asked.month_tokens("t", "202603", T0) == 300
    other = await asked.admit(tenant, 500, T0, "resp_2", T0 + timedelta(minutes=5))
    assert other.charge is not None
    await took_over.settle(other.charge, 100)  # another response: its own
    assert await asked.month_tokens("t", "202603", T0) == 400
    # settled at its estimate, nothing changes but that it is no longer open: it is not refunded later
    exact = await asked.admit(tenant, 50, T0, "chatcmpl-3", T0 + timedelta(minutes=5))
    assert exact.charge is not None
    await asked.settle(exact.charge, 50)
    assert await asked.month_tokens("t", "202603", T0 + timedelta(hours=1)) == 450


async def test_a_charge_left_open_past_its_time_is_refunded_once(redis: Redis, namespace: str) -> None:
    """Its instance died before settling it: the tenant's next charge, or a read of its usage, refunds it whole
    once its deadline is 10 minutes past; a settlement that comes after that changes nothing."""
    limiter = RateLimiter(redis, namespace)
    tenant = Tenant(id="t", monthly_token_quota=10_000, tokens_per_minute=5_000)
    deadline = T0 + timedelta(seconds=30)
    lost = await limiter.admit(tenant, 2_000, T0, "chatcmpl-lost", deadline)
    kept = await limiter.admit(tenant, 1_000, T0, "chatcmpl-long", T0 + timedelta(minutes=30))
    assert lost.charge is not None and kept.charge is not None
    assert await limiter.month_tokens("t", "202603", deadline + timedelta(minutes=9)) == 3_000  # not yet
    # not refunded yet, its tokens still weigh on the minute: 3,000 + 2,500 is past 5,000
    assert not (await limiter.admit(tenant, 2_500, T0 + timedelta(seconds=50))).allowed
    assert (await limiter.admit(tenant, 2_500, deadline + timedelta(minutes=10))).allowed  # a later window's
    assert await limiter.month_tokens("t", "202603", deadline + timedelta(minutes=10)) == 1_000 + 2_500
    await limiter.settle(lost.charge, 700)  # too late: it was refunded already, and stays so
    await limiter.settle(kept.charge, 400)
    assert await limiter.month_tokens("t", "202603", T0 + timedelta(hours=2)) == 400 + 2_500


async def test_a_charge_stored_before_charges_were_kept_open_is_settled_once(redis: Redis, namespace: str) -> None:
    asked, took_over = RateLimiter(redis, namespace), RateLimiter(redis, namespace)
    tenant = Tenant(id="t", monthly_token_quota=10_000)
    admitted = await asked.admit(tenant, 900, T0)
    assert admitted.charge is not None
    charge = replace(admitted.charge, settled_once_as="resp_1")  # a background response's, stored with it
    await asked.settle(charge, 300)
    # the instance that asked died before storing the response's end: the one that took it over settles it again
    await took_over.settle(charge, 300)
    assert await asked.month_tokens("t", "202603") == 300
    other = await asked.admit(tenant, 500, T0)
    assert other.charge is not None
    await took_over.settle(replace(other.charge, settled_once_as="resp_2"), 100)  # another response: its own
    assert await asked.month_tokens("t", "202603") == 400


async def test_monthly_quota_refuses_until_next_month(redis: Redis, namespace: str) -> None:
    limiter = RateLimiter(redis, namespace)
    tenant = Tenant(id="t", monthly_token_quota=100)
    assert (await limiter.admit(tenant, 80, T0)).allowed
    refused = await limiter.admit(tenant, 30, T0 + timedelta(days=5))
    assert not refused.allowed and refused.limit == "quota"
    assert refused.retry_after_s == int((datetime(2026, 4, 1, tzinfo=UTC) - (T0 + timedelta(days=5))).total_seconds())
    assert (await limiter.admit(tenant, 30, datetime(2026, 4, 1, tzinfo=UTC))).allowed


async def test_tenants_do_not_share_counts(redis: Redis, namespace: str) -> None:
    limiter = RateLimiter(redis, namespace)
    assert (await limiter.admit(Tenant(id="a", requests_per_minute=1), 1, T0)).allowed
    assert not (await limiter.admit(Tenant(id="a", requests_per_minute=1), 1, T0)).allowed
    assert (await limiter.admit(Tenant(id="b", requests_per_minute=1), 1, T0)).allowed


async def test_what_is_left_of_each_limit_is_reported_after_the_charge(redis: Redis, namespace: str) -> None:
    limiter = RateLimiter(redis, namespace)
    tenant = Tenant(id="t", requests_per_minute=3, tokens_per_minute=1000)
    first = await limiter.admit(tenant, 400, T0)
    assert (first.requests_left, first.tokens_left) == (2, 600)
    assert first.headers(tenant) == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "2m0s",  # this window's charge weighs on the sliding minute to the next's end
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "600",
        "x-ratelimit-reset-tokens": "2m0s",
    }
    refused = await limiter.admit(tenant, 700, T0)  # nothing is charged: what is left stays
    assert not refused.allowed and (refused.requests_left, refused.tokens_left) == (2, 600)
    # 30 s into the next window half of the previous one still counts: 3 - ceil(1 + 1 * 0.5), 1000 - (100 + 400 * 0.5)
    later = await limiter.admit(tenant, 100, T0 + timedelta(seconds=90))
    assert (later.requests_left, later.tokens_left) == (1, 700)
    assert (later.requests_reset_ms, later.tokens_reset_ms) == (90_000, 90_000)


async def test_reset_is_when_the_sliding_minute_holds_nothing_of_the_tenant(redis: Redis, namespace: str) -> None:
    limiter = RateLimiter(redis, namespace)
    tenant = Tenant(id="t", requests_per_minute=1)
    first = await limiter.admit(tenant, 1, T0 + timedelta(seconds=15))
    assert first.allowed and first.requests_reset_ms == 105_000 and first.tokens_reset_ms is None
    # 10 s into the next window: 5/6 of the last request still counts, so this one is refused and charges nothing;
    # what is left of the limit is then whole at the end of this window
    refused = await limiter.admit(tenant, 1, T0 + timedelta(seconds=70))
    assert not refused.allowed and refused.requests_reset_ms == 50_000
    assert refused.headers(tenant)["x-ratelimit-reset-requests"] == "50s"
    after_reset = await limiter.admit(tenant, 1, T0 + timedelta(seconds=120))
    assert after_reset.allowed and after_reset.requests_left == 0


async def test_limits_a_tenant_does_not_have_are_not_reported(redis: Redis, namespace: str) -> None:
    limiter = RateLimiter(redis, namespace)
    tenant = Tenant(id="t", tokens_per_minute=50)
    admitted = await limiter.admit(tenant, 20, T0)
    assert admitted.requests_left is None and admitted.tokens_left == 30
    assert set(admitted.headers(tenant)) == {
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    }
    assert (await limiter.admit(Tenant(id="free"), 20, T0)).headers(Tenant(id="free")) == {}
