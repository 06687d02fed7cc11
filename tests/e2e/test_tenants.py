"""Tenants, API keys and per-tenant limits through the public API, with real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from shared.contracts import CompletionRequested
from tests.e2e.platform import TINY_MODEL, Platform, start_extra_ingress, stop_service

CHAT = "/v1/chat/completions"


def chat(platform: Platform, key: str | None, base_url: str | None = None, **body: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    payload = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4} | body
    return httpx.post(f"{base_url or platform.base_url}{CHAT}", json=payload, headers=headers, timeout=60)


def assert_error(response: httpx.Response, status: int, code: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["code"] == code
    return error


@pytest.mark.parametrize("path", ["/v1/models", f"/v1/models/{TINY_MODEL}", CHAT, "/v1/completions"])
def test_every_api_route_needs_a_key(platform: Platform, path: str) -> None:
    reading = path.startswith("/v1/models")
    method = httpx.get if reading else httpx.post
    kwargs = {} if reading else {"json": {"model": TINY_MODEL, "prompt": "hi"}}
    missing = method(f"{platform.base_url}{path}", timeout=10, **kwargs)  # type: ignore[operator]
    assert_error(missing, 401, "missing_api_key")
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = method(  # type: ignore[operator]
        f"{platform.base_url}{path}", headers={"authorization": "Bearer ferry-not-a-key"}, timeout=10, **kwargs
    )
    assert "ferry-not-a-key" not in assert_error(wrong, 401, "invalid_api_key")["message"], "the key must not echo"
    assert httpx.get(f"{platform.base_url}/health", timeout=10).status_code == 200


def test_a_revoked_key_stops_working_and_other_keys_do_not(platform: Platform) -> None:
    tenant = f"revoking-{uuid.uuid4().hex[:6]}"
    kept, revoked = platform.new_tenant(tenant), platform.new_tenant(tenant)
    assert chat(platform, revoked).status_code == 200
    key_id = next(line.split("\t")[0] for line in platform.admin("keys", "list", tenant).splitlines()[1:])
    listed = platform.admin("keys", "list", tenant)
    assert revoked not in listed and kept not in listed, "secrets are never listed"
    platform.admin("keys", "revoke", key_id)
    # the ingress reuses a key check for FERRY_INGRESS_AUTH_CACHE_S (0.5 s in tests)
    deadline = time.monotonic() + 10
    while chat(platform, revoked).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert_error(chat(platform, revoked), 401, "invalid_api_key")
    assert chat(platform, kept).status_code == 200


def test_a_priority_above_the_tenants_ceiling_is_refused(platform: Platform) -> None:
    options = ("--max-priority", "batch", "--default-priority", "batch")
    key = platform.new_tenant(f"batchy-{uuid.uuid4().hex[:6]}", *options)
    assert chat(platform, key).status_code == 200
    assert chat(platform, key, priority="best_effort").status_code == 200
    assert_error(chat(platform, key, priority="interactive"), 403, "priority_not_allowed")
    response = httpx.post(
        f"{platform.base_url}{CHAT}",
        json={"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        headers={"authorization": f"Bearer {key}", "x-ferry-priority": "urgent"},
        timeout=10,
    )
    assert_error(response, 400, "invalid_value")


async def test_openai_service_tiers_set_a_requests_scheduling(platform: Platform) -> None:
    options = ("--max-priority", "batch", "--default-priority", "batch")
    key = platform.new_tenant(f"tiers-{uuid.uuid4().hex[:6]}", *options)
    topic = platform.common.topics.requests(TINY_MODEL)
    # every partition from the start: the test's requests are among what it reads
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=platform.common.kafka_bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        asked = {
            "flex": {"service_tier": "flex"},
            "priority": {"service_tier": "priority"},  # above the tenant's ceiling: lowered to it, not refused
            "flex, own profile": {"service_tier": "flex", "batching_profile": "throughput"},
            "default": {"service_tier": "default"},
        }
        ids = {}
        for name, body in asked.items():
            fresh = [{"role": "user", "content": f"hi, {name}"}]  # not an answer from the response cache
            response = await asyncio.to_thread(chat, platform, key, messages=fresh, **body)
            assert response.status_code == 200, response.text
            ids[response.headers["x-request-id"]] = name
        scheduled: dict[str, tuple[str, str | None]] = {}
        deadline = time.monotonic() + 30
        while len(scheduled) < len(ids) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                # keyed by request id; other tests' records, some of them not requests at all, are left unread
                for record in (r for r in records if r.key is not None and r.key.decode() in ids):
                    request = CompletionRequested.model_validate_json(record.value)
                    scheduled[ids[request.request_id]] = (request.priority, request.profile)
    finally:
        await consumer.stop()
    assert scheduled == {
        "flex": ("best_effort", "cost"),
        "priority": ("batch", "latency"),
        "flex, own profile": ("best_effort", "throughput"),
        "default": ("batch", None),  # the tenant's defaults
    }


async def test_concurrent_tenants_each_get_exactly_their_own_answers(platform: Platform) -> None:
    keys = {name: platform.new_tenant(f"{name}-{uuid.uuid4().hex[:6]}") for name in ("alpha", "beta")}
    prompts = {name: f"{name} asks about the number {i}" for i, name in enumerate(keys)}
    seeds = {name: i for i, name in enumerate(keys)}  # the tiny random model follows its seed more than the prompt

    async def ask(client: httpx.AsyncClient, name: str) -> str:
        response = await client.post(
            CHAT,
            json={
                "model": TINY_MODEL,
                "messages": [{"role": "user", "content": prompts[name]}],
                "max_tokens": 24,
                "temperature": 1,
                "seed": seeds[name],  # seeded sampling: the same request always gives the same text
            },
            headers={"authorization": f"Bearer {keys[name]}"},
        )
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]

    async with httpx.AsyncClient(base_url=platform.base_url, timeout=120) as client:
        alone = {name: await ask(client, name) for name in keys}
        assert alone["alpha"] != alone["beta"], "the two prompts must give different answers for this test to mean much"
        together = await asyncio.gather(*(ask(client, name) for name in list(keys) * 4))
    assert together == [alone[name] for name in list(keys) * 4]


def test_rate_limits_hold_across_two_ingress_instances(platform: Platform) -> None:
    key = platform.new_tenant(f"limited-{uuid.uuid4().hex[:6]}", "--rpm", "4")
    other = platform.new_tenant(f"unlimited-{uuid.uuid4().hex[:6]}")
    extra = start_extra_ingress(platform, "second")
    away_from_a_minute_boundary()
    try:
        urls = [platform.base_url, f"http://127.0.0.1:{extra.port}"]
        responses = [chat(platform, key, base_url=urls[i % 2]) for i in range(6)]
        statuses = [r.status_code for r in responses]
        assert statuses.count(200) == 4, statuses
        # OpenAI's headers say what is left, counted across both instances
        left = [r.headers.get("x-ratelimit-remaining-requests") for r in responses]
        assert left == ["3", "2", "1", "0", "0", "0"], left
        assert {r.headers.get("x-ratelimit-limit-requests") for r in responses} == {"4"}
        # and when the sliding minute holds none of them: between one and two minutes, in Go's notation as OpenAI's
        for response in responses:
            reset = re.fullmatch(r"(\d+)m([\d.]+)s", response.headers["x-ratelimit-reset-requests"])
            assert reset is not None and 60 <= int(reset[1]) * 60 + float(reset[2]) <= 120, response.headers
        refused = chat(platform, key, base_url=urls[1])
        error = assert_error(refused, 429, "rate_limit_requests")
        assert error["type"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 120
        # one tenant's limit is not another's
        unlimited = chat(platform, other, base_url=urls[0])
        assert unlimited.status_code == 200 and not any(h.startswith("x-ratelimit-") for h in unlimited.headers)
        assert chat(platform, other, base_url=urls[1]).status_code == 200
    finally:
        stop_service(extra)


def away_from_a_minute_boundary() -> None:
    """Limits count in one-minute windows (the previous one weighted by its overlap); an exact count is only
    predictable when the test does not straddle a boundary."""
    into = time.time() % 60
    if into > 30:  # the requests after it take seconds on a busy machine
        time.sleep(60 - into + 0.1)


def test_token_limits_refuse_early_and_count_real_usage(platform: Platform) -> None:
    tenant = f"tokens-{uuid.uuid4().hex[:6]}"
    key = platform.new_tenant(tenant, "--tpm", "100")
    # alone larger than the limit: waiting cannot help, so it is a 400 naming max_tokens
    assert_error(chat(platform, key, max_tokens=500), 400, "tokens_exceed_rate_limit")
    away_from_a_minute_boundary()
    first = chat(platform, key, max_tokens=10)  # charged 1 + 10 at admission ("hi" is 2 characters)
    assert first.status_code == 200
    used = first.json()["usage"]["total_tokens"]
    assert used > 11, "the chat template makes the real count larger than the estimate"
    # the settlement follows the reply; the month's count and the minute's are settled together
    assert asyncio.run(platform.tokens_counted(tenant, until=used)) == used
    # charged 1 + (100 - used) : one token more than what is left once the real count is settled
    assert_error(chat(platform, key, max_tokens=100 - used), 429, "rate_limit_tokens")
    assert chat(platform, key, max_tokens=99 - used).status_code == 200


def test_max_tokens_beyond_the_models_context_is_charged_only_what_the_context_leaves(platform: Platform) -> None:
    # the worker cuts max_tokens to what the context leaves (the tiny model's is 2048 tokens), so a client's habit of
    # asking for far more must not be refused as more than the tenant may use in a minute
    key = platform.new_tenant(f"context-{uuid.uuid4().hex[:6]}", "--tpm", "3000")
    away_from_a_minute_boundary()
    payload = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1_000_000}
    headers = {"authorization": f"Bearer {key}"}
    with httpx.stream("POST", f"{platform.base_url}{CHAT}", json=payload | {"stream": True}, headers=headers) as reply:
        assert reply.status_code == 200, reply.read()
        charged = 3000 - int(reply.headers["x-ratelimit-remaining-tokens"])
    assert 2048 <= charged <= 2048 + 1  # the context's 2048 tokens at most, and the prompt's estimate ("hi": 1)


def test_monthly_quota_is_enforced(platform: Platform) -> None:
    key = platform.new_tenant(f"quota-{uuid.uuid4().hex[:6]}", "--monthly-tokens", "60")
    assert chat(platform, key, max_tokens=30).status_code == 200
    refused = chat(platform, key, max_tokens=59)
    error = assert_error(refused, 429, "insufficient_quota")
    assert error["type"] == "insufficient_quota" and int(refused.headers["retry-after"]) > 0
