"""Schemathesis fuzzes the published OpenAPI spec against the real server and infrastructure: every response must
match the spec (status, content type, body schema), none may be a 5xx, and none may hang."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.e2e.platform import Platform

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_the_api_keeps_its_published_contract(platform: Platform, tmp_path: Path) -> None:
    _fuzz(platform, platform.api_key, tmp_path)


def test_the_admin_api_keeps_its_published_contract_with_an_admin_key(platform: Platform, tmp_path: Path) -> None:
    admin_key = platform.admin("admin-keys", "create", "--name", "fuzz").split("\t")[1]
    # no stateful phase: it would feed ids from list responses back into PATCH and DELETE, changing the session's own
    # tenants and revoking its key under the tests that run next
    _fuzz(platform, admin_key, tmp_path, "--include-path-regex", "^/admin/", "--phases", "examples,coverage,fuzzing")


def _fuzz(platform: Platform, key: str, workdir: Path, *options: str) -> None:
    command = [
        str(Path(sys.executable).with_name("st")),
        "run",
        f"{platform.base_url}/openapi.json",
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
