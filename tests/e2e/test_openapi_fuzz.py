"""Schemathesis fuzzes the published OpenAPI spec against the real server and infrastructure: every response must
match the spec (status, content type, body schema), none may be a 5xx, and none may hang."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

from shared.settings import CommonSettings
from tests.e2e.platform import (
    ROOT,
    Platform,
    Service,
    _create_database,
    _drop_database,
    _dsn,
    free_port,
    start_extra,
    start_extra_ingress,
    stop_service,
)

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
    "negative_data_rejection,ignored_auth"
)


def test_the_api_keeps_its_published_contract(platform: Platform, tmp_path: Path) -> None:
    # An ingress of its own whose default max_tokens is 16 rather than 512: most fuzzed requests send none, and 512
    # tokens each (2-3 s of the tiny model) made the run outlast its 10 minutes once, on a busy machine. The
    # contract checked is the same; the default is a setting.
    ingress = start_extra_ingress(platform, "fuzz", {"FERRY_INGRESS_DEFAULT_MAX_TOKENS": "16"})
    try:
        _fuzz(f"http://127.0.0.1:{ingress.port}", platform.api_key, tmp_path)
    finally:
        stop_service(ingress)


def test_the_routes_that_keep_text_keep_their_contract_for_a_tenant_that_keeps_text(
    platform: Platform, tmp_path: Path
) -> None:
    # The session's tenant keeps no text, so stored responses, conversations, files and batches answer it
    # before they reach PostgreSQL; this tenant's requests go all the way (stored items, references, background).
    key = platform.new_tenant("fuzz-keeps-text", "--retention-days", "1")
    ingress = start_extra_ingress(platform, "fuzz-kept", {"FERRY_INGRESS_DEFAULT_MAX_TOKENS": "16"})
    try:
        _fuzz(
            f"http://127.0.0.1:{ingress.port}",
            key,
            tmp_path,
            "--include-path-regex",
            "^/v1/(responses|conversations|files|batches)",
        )
    finally:
        stop_service(ingress)


def test_the_admin_api_keeps_its_published_contract_with_an_admin_key(platform: Platform, tmp_path: Path) -> None:
    # An ingress of its own on a database of its own: the fuzzer reuses ids it reads in responses, so on the session's
    # database it would change the session's tenants and revoke its key under the tests that run next.
    base = CommonSettings()
    database = f"ferry_fuzz_{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_database(base.postgres_dsn, database))
    env = {"FERRY_POSTGRES_DSN": _dsn(base.postgres_dsn, database)}
    port = free_port()
    service = Service(
        "ingress-admin-fuzz",
        "services.ingress.main",
        port,
        env | {"FERRY_INGRESS_PORT": str(port), "FERRY_INGRESS_INSTANCE_ID": f"admin-fuzz-{database}"},
    )
    try:
        prepare = [sys.executable, "-m", "shared.prepare"]
        subprocess.run(prepare, env=platform.env | env, cwd=ROOT, check=True, capture_output=True)
        made = subprocess.run(
            [sys.executable, "-m", "services.ingress.admin", "admin-keys", "create", "--name", "fuzz"],
            env=platform.env | env, cwd=ROOT, check=True, capture_output=True, text=True,
        )  # fmt: skip
        start_extra(platform, service)
        admin_key = made.stdout.split("\t")[1].strip()
        _fuzz(f"http://127.0.0.1:{port}", admin_key, tmp_path, "--include-path-regex", "^/admin/")
    finally:
        stop_service(service)
        asyncio.run(_drop_database(base.postgres_dsn, database))


def _fuzz(base_url: str, key: str, workdir: Path, *options: str) -> None:
    command = [
        str(Path(sys.executable).with_name("st")),
        "run",
        f"{base_url}/openapi.json",
        *options,
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        CHECKS,
        "--max-examples",
        "15",
        "--request-timeout",
        "60",
        "--seed",
        "1",
        "--no-color",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=workdir)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
