"""Per-tenant rate limits and quotas, kept in Redis so that every ingress instance sees the same counts.

Requests and tokens per minute use a sliding window approximated from two fixed one-minute windows (the previous
window's count weighted by how much of it still overlaps the last minute), checked and charged in one Lua script so
two instances cannot both take the last unit. Tokens are charged at admission from an estimate and settled when the
request finishes. A check waits at most ``timeout_s`` for Redis; a failure or timeout raises DependencyUnavailable,
and the caller decides whether the request passes unchecked.

Each charge stays open in Redis (a sorted set per tenant, by when it must be settled) until it is settled, and is
settled once: a second settlement of the same charge changes nothing. One left open past its time was never settled,
its instance having died (or lost Redis) first: the next charge of its tenant, or a read of its usage, refunds it,
rather than leave its whole estimate on the monthly quota for good."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from services.ingress.tenants import Tenant
from shared.outages import REDIS_FAILURES, Breaker, DependencyUnavailable

logger = logging.getLogger(__name__)

WINDOW_MS = 60_000

# Refunds the tenant's open charges whose time to be settled has passed (at most 100 a call): its request's instance
# died, or could not reach Redis, before settling it. An open charge is "request id|window|month|tokens".
_REFUND_UNSETTLED = """
local function refund_unsettled(open_key, base, now)
  local expired = redis.call('ZRANGEBYSCORE', open_key, '-inf', now, 'LIMIT', 0, 100)
  for _, member in ipairs(expired) do
    redis.call('ZREM', open_key, member)
    local window, month, tokens = string.match(member, '|(%d+)|(%d+)|(%d+)$')
    if tokens then
      for _, key in ipairs({base .. ':tok:' .. window, base .. ':quota:' .. month}) do
        if redis.call('EXISTS', key) == 1 and redis.call('DECRBY', key, tokens) < 0 then
          redis.call('SET', key, 0, 'KEEPTTL')
        end
      end
    end
  end
end
"""

# KEYS: requests (this window, previous), tokens (this window, previous), monthly quota, open charges.
# ARGV: now_ms, window_ms, requests_per_minute, tokens_per_minute, token_cost, monthly_quota (0 = unlimited), the
# tenant's key base, the open charge ('' for none), when it must be settled by (ms).
# Returns {allowed, retry_after_ms, limit_name, requests_left, tokens_left, requests_reset_ms, tokens_reset_ms}: what is
# left of each per-minute limit in the sliding window after this request (its charge included when allowed), and how
# long until the window holds nothing of it any more (what is left is then the whole limit, if nothing else is
# charged); -1 for a limit the tenant does not have.
_CHECK_AND_CHARGE = (
    _REFUND_UNSETTLED
    + """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
refund_unsettled(KEYS[6], ARGV[7], now)
local rpm, tpm, cost, quota = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local into = now % window
local function wait_ms(limit, cur_key, prev_key, add)
  if limit == 0 then return 0 end
  if add > limit then return -1 end
  local cur = tonumber(redis.call('GET', cur_key) or '0')
  local prev = tonumber(redis.call('GET', prev_key) or '0')
  if cur + add > limit then
    -- only the next window can take it, once enough of this window has slid out
    local frac = 1 - (limit - add) / cur
    return (window - into) + math.ceil(frac * window)
  end
  if prev == 0 then return 0 end
  local need = (1 - (limit - cur - add) / prev) * window
  if need <= into then return 0 end
  return math.ceil(need - into)
end
local function standing(limit, cur_key, prev_key)
  if limit == 0 then return -1, -1 end
  local cur = tonumber(redis.call('GET', cur_key) or '0')
  local prev = tonumber(redis.call('GET', prev_key) or '0')
  local left = math.max(0, limit - math.ceil(cur + prev * (window - into) / window))
  -- this window's count weighs on the sliding minute until the end of the next window, the previous one's until
  -- the end of this one
  local reset = 0
  if cur > 0 then reset = 2 * window - into elseif prev > 0 then reset = window - into end
  return left, reset
end
local function answer(allowed, wait, name)
  local requests_left, requests_reset = standing(rpm, KEYS[1], KEYS[2])
  local tokens_left, tokens_reset = standing(tpm, KEYS[3], KEYS[4])
  return {allowed, wait, name, requests_left, tokens_left, requests_reset, tokens_reset}
end
local req_wait = wait_ms(rpm, KEYS[1], KEYS[2], 1)
if req_wait ~= 0 then return answer(0, req_wait, 'requests') end
local tok_wait = wait_ms(tpm, KEYS[3], KEYS[4], cost)
if tok_wait ~= 0 then return answer(0, tok_wait, 'tokens') end
if quota > 0 and tonumber(redis.call('GET', KEYS[5]) or '0') + cost > quota then return answer(0, -2, 'quota') end
redis.call('INCR', KEYS[1]); redis.call('PEXPIRE', KEYS[1], 2 * window)
redis.call('INCRBY', KEYS[3], cost); redis.call('PEXPIRE', KEYS[3], 2 * window)
redis.call('INCRBY', KEYS[5], cost); redis.call('EXPIRE', KEYS[5], 3024000)
if ARGV[8] ~= '' then redis.call('ZADD', KEYS[6], ARGV[9], ARGV[8]) end
return answer(1, 0, '')
"""
)

# KEYS: the monthly quota, open charges; ARGV: now_ms, the tenant's key base. Returns the quota's count, once the
# charges left unsettled are refunded.
_COUNTED = (
    _REFUND_UNSETTLED
    + """
refund_unsettled(KEYS[2], ARGV[2], tonumber(ARGV[1]))
return tonumber(redis.call('GET', KEYS[1]) or '0')
"""
)

# KEYS: the two counters to correct, then the tenant's open charges, or (a charge stored before they were kept) its
# settlement's marker; ARGV: delta, the marker's lifetime in seconds, the open charge ('' for a marker). A counter
# that has expired stays gone (its window is over); none goes below 0. Returns 0 when the charge was settled before
# (nothing changes), else 1.
_SETTLE = """
if KEYS[3] then
  if ARGV[3] ~= '' then
    if redis.call('ZREM', KEYS[3], ARGV[3]) == 0 then return 0 end
  elseif not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[2]) then
    return 0
  end
end
for i = 1, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 and redis.call('INCRBY', KEYS[i], ARGV[1]) < 0 then
    redis.call('SET', KEYS[i], 0, 'KEEPTTL')
  end
end
return 1
"""

SETTLED_MARK_S = 2 * 86_400
"""How long a charge settled once is remembered as settled: longer than a request's deadline can be."""

SETTLE_RETRIES_S = (1.0, 2.0, 4.0, 8.0, 16.0)
"""Waits between the tries of a settlement Redis does not take: an open charge not settled in time is refunded
whole, which under-counts a request that used tokens."""


@dataclass(frozen=True)
class Admission:
    """The outcome of charging a request: allowed, or which limit refused it and when to retry."""

    allowed: bool
    limit: str = ""
    retry_after_s: int | None = None
    """None when waiting cannot help (the request alone is larger than the limit)."""
    charge: Charge | None = None
    requests_left: int | None = None
    """Requests the tenant may still make in the sliding minute; None without a requests-per-minute limit."""
    tokens_left: int | None = None
    """Tokens left in the sliding minute, counting admitted requests at their estimate until they are settled; None
    without a tokens-per-minute limit."""
    requests_reset_ms: int | None = None
    """Time until the sliding minute holds none of the tenant's requests, so that all of its limit is left if it makes
    no other; None without a requests-per-minute limit."""
    tokens_reset_ms: int | None = None
    """The same for tokens; None without a tokens-per-minute limit."""

    def headers(self, tenant: Tenant) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-limit-*``, ``x-ratelimit-remaining-*`` and ``x-ratelimit-reset-*`` headers, for the
        limits the tenant has."""
        headers: dict[str, str] = {}
        for kind, limit, left, reset_ms in (
            ("requests", tenant.requests_per_minute, self.requests_left, self.requests_reset_ms),
            ("tokens", tenant.tokens_per_minute, self.tokens_left, self.tokens_reset_ms),
        ):
            if limit and left is not None:
                headers[f"x-ratelimit-limit-{kind}"] = str(limit)
                headers[f"x-ratelimit-remaining-{kind}"] = str(left)
            if limit and reset_ms is not None:
                headers[f"x-ratelimit-reset-{kind}"] = go_duration(reset_ms)
        return headers


@dataclass(frozen=True)
class Charge:
    """What was charged, so the difference with the real token count can be settled later."""

    tenant_id: str
    window: int
    month: str
    tokens: int
    settled_once_as: str | None = None
    """The marker under which Redis took the first settlement only, of a background response's charge stored before
    charges were kept open (``request_id``)."""
    request_id: str | None = None
    """The request it was charged for: its charge is open in Redis under this id until it is settled, once."""

    def opened(self) -> str:
        """How it is kept open in Redis."""
        return f"{self.request_id}|{self.window}|{self.month}|{self.tokens}"


class RateLimiter:
    def __init__(
        self, redis: Redis, namespace: str, timeout_s: float = 0.5, refund_after: timedelta = timedelta(minutes=10)
    ) -> None:
        """``refund_after``: how long after its request's deadline a charge may stay open before it is refunded as
        never settled."""
        self._ns, self._client, self._refund_after = namespace, redis, refund_after
        self._redis = Breaker("rate_limits", timeout_s, 1.0, REDIS_FAILURES)
        self._check_and_charge = redis.register_script(_CHECK_AND_CHARGE)
        self._settle = redis.register_script(_SETTLE)
        self._counted = redis.register_script(_COUNTED)

    def _keys(self, tenant_id: str, window: int, month: str) -> list[str]:
        base = self._base(tenant_id)
        return [
            f"{base}:req:{window}",
            f"{base}:req:{window - 1}",
            f"{base}:tok:{window}",
            f"{base}:tok:{window - 1}",
            self._quota_key(tenant_id, month),
            self._open_key(tenant_id),
        ]

    def _open_key(self, tenant_id: str) -> str:
        return f"{self._base(tenant_id)}:open"

    def _base(self, tenant_id: str) -> str:
        return f"{self._ns}ratelimit:{{{tenant_id}}}"  # one hash slot per tenant: the scripts touch its keys together

    def _quota_key(self, tenant_id: str, month: str) -> str:
        return f"{self._base(tenant_id)}:quota:{month}"

    async def admit(
        self,
        tenant: Tenant,
        tokens: int,
        now: datetime | None = None,
        request_id: str | None = None,
        deadline_at: datetime | None = None,
    ) -> Admission:
        """Checks the tenant's limits and charges ``tokens``; with ``request_id``, the charge stays open until it is
        settled, or is refunded whole if it is not by ``refund_after`` after ``deadline_at``."""
        now = now or datetime.now(UTC)
        now_ms = int(now.timestamp() * 1000)
        window, month = now_ms // WINDOW_MS, now.strftime("%Y%m")
        charge = Charge(tenant.id, window, month, tokens, request_id=request_id)
        settle_by = (deadline_at or now) + self._refund_after
        allowed, wait_ms, limit, requests_left, tokens_left, requests_reset, tokens_reset = await self._redis.call(
            lambda: self._check_and_charge(
                keys=self._keys(tenant.id, window, month),
                args=[
                    now_ms,
                    WINDOW_MS,
                    tenant.requests_per_minute or 0,
                    tenant.tokens_per_minute or 0,
                    tokens,
                    tenant.monthly_token_quota or 0,
                    self._base(tenant.id),
                    charge.opened() if request_id is not None else "",
                    int(settle_by.timestamp() * 1000),
                ],
            )
        )
        limit = limit.decode() if isinstance(limit, bytes) else str(limit)
        left = {
            "requests_left": None if requests_left < 0 else requests_left,
            "tokens_left": None if tokens_left < 0 else tokens_left,
            "requests_reset_ms": None if requests_reset < 0 else requests_reset,
            "tokens_reset_ms": None if tokens_reset < 0 else tokens_reset,
        }
        if allowed:
            return Admission(True, charge=charge, **left)
        if wait_ms == -1:
            return Admission(False, limit, None, **left)
        if wait_ms == -2:
            return Admission(False, limit, _seconds_to_next_month(now), **left)
        return Admission(False, limit, max(1, math.ceil(wait_ms / 1000)), **left)

    async def month_tokens(self, tenant_id: str, month: str, now: datetime | None = None) -> int:
        """The tokens the tenant's monthly quota counts for ``month`` (YYYYMM, UTC): those of its requests that ended,
        and the estimates of those still running. Raises DependencyUnavailable."""
        now_ms = int((now or datetime.now(UTC)).timestamp() * 1000)
        keys = [self._quota_key(tenant_id, month), self._open_key(tenant_id)]
        counted = await self._redis.call(lambda: self._counted(keys=keys, args=[now_ms, self._base(tenant_id)]))
        return int(counted or 0)

    async def settle(self, charge: Charge, actual_tokens: int) -> None:
        """Replaces the admission estimate by the real token count (usually a refund: max_tokens is rarely used up),
        the first time only for a charge kept open (or one with ``settled_once_as``). Redis down, it tries again
        for half a minute (SETTLE_RETRIES_S)."""
        delta = actual_tokens - charge.tokens
        keys = self._keys(charge.tenant_id, charge.window, charge.month)
        counters, opened = [keys[2], keys[4]], ""
        if charge.request_id is not None:
            counters.append(self._open_key(charge.tenant_id))
            opened = charge.opened()
        elif charge.settled_once_as is not None:
            counters.append(f"{self._base(charge.tenant_id)}:settled:{charge.settled_once_as}")
        elif delta == 0:
            return
        for wait_s in (*SETTLE_RETRIES_S, None):
            try:
                await self._redis.call(lambda: self._settle(keys=counters, args=[delta, SETTLED_MARK_S, opened]))
                return
            except DependencyUnavailable:
                if wait_s is None:
                    break
                await asyncio.sleep(wait_s)
        # an open charge is refunded whole once its time passes; one not kept open stays charged
        logger.warning("Redis did not take a settlement of tenant %s's tokens (%+d)", charge.tenant_id, delta)


def batch_limits(tenant: Tenant, share: float, tokens: int) -> Tenant:
    """The tenant as a request of its batches is checked: each per-minute limit cut to ``share`` of it (at least 1),
    so that a running batch leaves the rest of every minute to the tenant's other requests, which are checked against
    the whole limits. A request estimated at more tokens than the share, but within the whole limit, may still run,
    once the minute holds little enough. The monthly quota is the tenant's whole."""

    def cut(limit: int | None, least: int = 1) -> int | None:
        return max(least, math.floor(limit * share)) if limit else limit

    requests_cut = cut(tenant.requests_per_minute)
    tokens_cut = cut(tenant.tokens_per_minute, min(tokens, tenant.tokens_per_minute or 0))
    return dataclasses.replace(tenant, requests_per_minute=requests_cut, tokens_per_minute=tokens_cut)


def go_duration(ms: int) -> str:
    """A duration as OpenAI writes its reset headers, in Go's notation: 20ms, 1.5s, 6m0s."""
    if 0 < ms < 1000:
        return f"{ms}ms"
    minutes, rest_ms = divmod(ms, 60_000)
    seconds = f"{rest_ms / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def _seconds_to_next_month(now: datetime) -> int:
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return max(1, math.ceil((datetime(year, month, 1, tzinfo=UTC) - now).total_seconds()))
