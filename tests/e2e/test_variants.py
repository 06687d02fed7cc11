"""Which model variant answers: the request's (body field or x-ferry-variant header), else its tenant's default, else
the model's default from the registry. The platform's workers load fp32 only, so other variants show the fallback
and the clear error a client gets when it refuses the fallback."""

from __future__ import annotations

import json
import uuid

import httpx

from tests.e2e.platform import TINY_MODEL, Platform
from tests.e2e.test_tenants import assert_error, chat


def test_a_variant_that_cannot_run_is_refused_unless_the_request_accepts_the_default(platform: Platform) -> None:
    refused = chat(platform, platform.api_key, variant="fp8", variant_fallback=False)
    error = assert_error(refused, 400, "variant_unavailable")
    assert error["param"] == "variant" and "cannot run on this hardware" in error["message"]
    assert refused.headers["x-request-id"]

    served = chat(platform, platform.api_key, variant="fp8")  # variant_fallback defaults to true
    assert served.status_code == 200, served.text
    assert served.headers["x-ferry-variant"] == served.json()["system_fingerprint"] == "fp32"  # what really answered
    plain = chat(platform, platform.api_key)
    assert plain.status_code == 200 and plain.headers["x-ferry-variant"] == "fp32"  # the registry's default


def test_a_stream_names_the_variant_that_generated_it_once_it_is_known(platform: Platform) -> None:
    payload = {
        "model": TINY_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
        "variant": "int8",  # these workers may not load int8: fp32 answers
    }
    with httpx.stream(
        "POST", f"{platform.base_url}/v1/chat/completions", json=payload, headers=platform.auth, timeout=60
    ) as response:
        assert response.status_code == 200
        chunks = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    finish, usage = chunks[-2], chunks[-1]
    assert finish["choices"][0]["finish_reason"] in ("stop", "length") and usage["usage"]["completion_tokens"] > 0
    assert finish["system_fingerprint"] == usage["system_fingerprint"] == "fp32"
    assert all("system_fingerprint" not in c for c in chunks[:-2])


def test_a_tenant_s_default_variant_applies_when_a_request_names_none(platform: Platform) -> None:
    key = platform.new_tenant(f"variant-{uuid.uuid4().hex[:6]}", "--default-variant", "int8")
    # the tenant's default travels with the request: this worker may not load int8, so a strict request is refused
    error = assert_error(chat(platform, key, variant_fallback=False), 400, "variant_unavailable")
    assert "'int8' is not loaded on this worker" in error["message"]
    # a variant the request names wins over the tenant's default, in the body or in the header
    named = chat(platform, key, variant="fp32", variant_fallback=False)
    assert named.status_code == 200 and named.headers["x-ferry-variant"] == "fp32", named.text
    by_header = httpx.post(
        f"{platform.base_url}/v1/chat/completions",
        json={"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
              "variant_fallback": False},
        headers={"authorization": f"Bearer {key}", "x-ferry-variant": "fp32"},
        timeout=60,
    )  # fmt: skip
    assert by_header.status_code == 200 and by_header.headers["x-ferry-variant"] == "fp32", by_header.text


def test_a_malformed_variant_name_is_a_400_naming_where_it_came_from(platform: Platform) -> None:
    in_body = assert_error(chat(platform, platform.api_key, variant="../int8"), 400, "invalid_value")
    assert in_body["param"] == "variant"
    in_header = httpx.post(
        f"{platform.base_url}/v1/chat/completions",
        json={"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {platform.api_key}", "x-ferry-variant": "INT 8"},
        timeout=60,
    )
    assert assert_error(in_header, 400, "invalid_value")["param"] == "x-ferry-variant"
