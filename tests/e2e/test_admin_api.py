"""The admin HTTP API, used as an operator would: an admin key made with the CLI creates a tenant and a key over
HTTP, the key works, changed limits apply, revocation stops it; tenant keys and no key are refused."""

from __future__ import annotations

import time
import uuid

import httpx

from tests.e2e.platform import TINY_MODEL, Platform


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _chat(client: httpx.Client, key: str) -> httpx.Response:
    body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return client.post("/v1/chat/completions", json=body, headers=_bearer(key))


def _until(check, timeout_s: float = 10.0):  # type: ignore[no-untyped-def]
    """Polls ``check`` until it returns a truthy value (the ingress caches key checks for a moment)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_an_admin_manages_tenants_and_keys_over_http(platform: Platform) -> None:
    admin_key = platform.admin("admin-keys", "create", "--name", "e2e").split("\t")[1]
    tenant = f"acme-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=platform.base_url, timeout=60) as client:
        created = client.post(
            "/admin/v1/tenants",
            json={"id": tenant, "name": "Acme", "tokens_per_minute": 100_000, "retention_days": 0},
            headers=_bearer(admin_key),
        )
        assert created.status_code == 201, created.text
        assert created.json()["id"] == tenant and created.json()["tokens_per_minute"] == 100_000
        again = client.post("/admin/v1/tenants", json={"id": tenant}, headers=_bearer(admin_key))
        assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
        listed = client.get("/admin/v1/tenants", headers=_bearer(admin_key)).json()
        assert tenant in [t["id"] for t in listed["data"]]

        made = client.post(f"/admin/v1/tenants/{tenant}/keys", json={"name": "ci"}, headers=_bearer(admin_key))
        assert made.status_code == 201, made.text
        key, key_id = made.json()["key"], made.json()["id"]
        assert made.json()["created_at"] is not None
        answer = _chat(client, key)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["role"] == "assistant"
        used = answer.json()["usage"]["total_tokens"]  # the admission estimate, settled when the answer came

        def usage() -> dict:  # type: ignore[type-arg]
            read = client.get(f"/admin/v1/tenants/{tenant}/usage", headers=_bearer(admin_key))
            assert read.status_code == 200, read.text
            return read.json()  # type: ignore[no-any-return]

        assert _until(lambda: usage()["tokens"] == used), usage()
        assert usage()["month"] == time.strftime("%Y-%m", time.gmtime()) and usage()["monthly_token_quota"] is None
        unknown = client.get("/admin/v1/tenants/nobody-here/usage", headers=_bearer(admin_key))
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "tenant_not_found"

        # limits and privacy settings change over HTTP and apply to the tenant's next requests
        changed = client.patch(
            f"/admin/v1/tenants/{tenant}",
            json={"requests_per_minute": 1, "retention_days": 7},
            headers=_bearer(admin_key),
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["requests_per_minute"] == 1 and changed.json()["retention_days"] == 7
        assert changed.json()["tokens_per_minute"] == 100_000  # fields not sent are kept
        limited = _until(lambda: _chat(client, key).status_code == 429)
        assert limited, "a tenant limited to 1 request per minute was never refused"

        # the response-cache opt-ins are settings like the others, and a scope name is checked
        opted = client.patch(
            f"/admin/v1/tenants/{tenant}",
            json={"cache_shared_scope": "faq-e2e", "cache_sampled": True},
            headers=_bearer(admin_key),
        )
        assert opted.status_code == 200, opted.text
        read = client.get(f"/admin/v1/tenants/{tenant}", headers=_bearer(admin_key)).json()
        assert (read["cache_shared_scope"], read["cache_sampled"], read["requests_per_minute"]) == ("faq-e2e", True, 1)
        left = client.patch(
            f"/admin/v1/tenants/{tenant}", json={"cache_shared_scope": None}, headers=_bearer(admin_key)
        )
        assert left.status_code == 200 and left.json()["cache_shared_scope"] is None
        assert left.json()["cached_responses_dropped"] is not None  # leaving a scope drops what it may have put there
        bad_scope = client.patch(
            f"/admin/v1/tenants/{tenant}", json={"cache_shared_scope": "no spaces"}, headers=_bearer(admin_key)
        )
        assert bad_scope.status_code == 400 and bad_scope.json()["error"]["param"] == "cache_shared_scope"

        # so is the model variant of requests that name none
        variant = client.patch(
            f"/admin/v1/tenants/{tenant}", json={"default_variant": "int8"}, headers=_bearer(admin_key)
        )
        assert variant.status_code == 200 and variant.json()["default_variant"] == "int8", variant.text
        bad_variant = client.patch(
            f"/admin/v1/tenants/{tenant}", json={"default_variant": "Int 8"}, headers=_bearer(admin_key)
        )
        assert bad_variant.status_code == 400 and bad_variant.json()["error"]["param"] == "default_variant"

        keys = client.get("/admin/v1/keys", params={"tenant_id": tenant}, headers=_bearer(admin_key)).json()
        assert [(k["id"], k["revoked_at"]) for k in keys["data"]] == [(key_id, None)]
        assert "key" not in keys["data"][0]  # the secret is shown once, at creation
        revoked = client.delete(f"/admin/v1/keys/{key_id}", headers=_bearer(admin_key))
        assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
        refused = _until(lambda: client.get("/v1/models", headers=_bearer(key)).status_code == 401)
        assert refused, "a revoked key kept working"
        assert client.delete(f"/admin/v1/keys/{key_id}", headers=_bearer(admin_key)).status_code == 404


def test_tenant_keys_and_missing_or_revoked_admin_keys_are_refused(platform: Platform) -> None:
    with httpx.Client(base_url=platform.base_url, timeout=30) as client:
        as_tenant = client.get("/admin/v1/tenants", headers=platform.auth)
        assert as_tenant.status_code == 403
        assert as_tenant.json()["error"]["type"] == "permission_error"
        as_tenant = client.post("/admin/v1/tenants", json={"id": "sneaky"}, headers=platform.auth)
        assert as_tenant.status_code == 403
        assert client.get("/admin/v1/keys").status_code == 401
        assert client.get("/admin/v1/keys", headers=_bearer("ferry-admin-made-up")).status_code == 401

        key_id, admin_key = platform.admin("admin-keys", "create").split("\t")
        assert client.get("/admin/v1/keys", headers=_bearer(admin_key)).status_code == 200
        # an admin key is no tenant key: it cannot run completions
        assert client.get("/v1/models", headers=_bearer(admin_key)).status_code == 401
        bad = client.post("/admin/v1/tenants", json={"id": "no spaces allowed"}, headers=_bearer(admin_key))
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "id"
        missing = client.patch("/admin/v1/tenants/nobody-here", json={"name": "x"}, headers=_bearer(admin_key))
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "tenant_not_found"

        platform.admin("admin-keys", "revoke", key_id)
        assert client.get("/admin/v1/keys", headers=_bearer(admin_key)).status_code == 401


def test_an_admin_rotates_admin_keys_over_http(platform: Platform) -> None:
    old_id, old_key = platform.admin("admin-keys", "create", "--name", "rotating").split("\t")
    with httpx.Client(base_url=platform.base_url, timeout=30) as client:
        made = client.post("/admin/v1/admin-keys", json={"name": "next"}, headers=_bearer(old_key))
        assert made.status_code == 201, made.text
        new_id, new_key = made.json()["id"], made.json()["key"]
        assert new_id.startswith("adminkey_") and new_key.startswith(made.json()["prefix"])
        assert made.json()["created_at"] is not None
        assert client.get("/admin/v1/tenants", headers=_bearer(new_key)).status_code == 200

        listed = client.get("/admin/v1/admin-keys", headers=_bearer(new_key))
        assert listed.status_code == 200
        by_id = {k["id"]: k for k in listed.json()["data"]}
        assert by_id[new_id]["name"] == "next" and by_id[old_id]["revoked_at"] is None
        assert all("key" not in k for k in by_id.values()), "a listing must never show a secret"
        # the CLI lists the key made over HTTP: both manage the same keys
        assert new_id in platform.admin("admin-keys", "list")

        revoked = client.delete(f"/admin/v1/admin-keys/{old_id}", headers=_bearer(new_key))
        assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
        assert client.get("/admin/v1/tenants", headers=_bearer(old_key)).status_code == 401  # at once: not cached
        again = client.delete(f"/admin/v1/admin-keys/{old_id}", headers=_bearer(new_key))
        assert again.status_code == 404 and again.json()["error"]["code"] == "key_not_found"
        # a tenant's key can neither make nor revoke admin keys
        assert client.post("/admin/v1/admin-keys", json={}, headers=platform.auth).status_code == 403
        assert client.delete(f"/admin/v1/admin-keys/{new_id}", headers=platform.auth).status_code == 403
        assert client.get("/admin/v1/tenants", headers=_bearer(new_key)).status_code == 200
