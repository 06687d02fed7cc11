"""Tenants and API keys from the command line: ``python -m services.ingress.admin --help``.

tenants create acme --name "Acme" --rpm 600 --tpm 200000 --retention-days 0
tenants update acme --cache-shared-scope docs-bot --cache-sampled     changes only the options given
tenants list
keys create acme --name ci         prints the key once; only its SHA-256 digest is stored
keys list [acme]
keys revoke key_0123abcd
admin-keys create --name ops       a key of the admin HTTP API (/admin/v1/...), printed once
admin-keys list
admin-keys revoke adminkey_0123abcd
dev-key .state/dev-api-key         the local platform's key: reused while valid, else made (tenant "default")
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import get_args

from services.cache.ops import invalidate_tenant
from services.ingress.adapters import TenantDirectory
from services.ingress.tenants import NewKey, Tenant
from shared.contracts import VARIANT_NAME_PATTERN, BatchingProfile, Priority
from shared.db import connect_pool
from shared.settings import CommonSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.ingress.admin", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    tenants = sub.add_parser("tenants", help="create or list tenants").add_subparsers(dest="action", required=True)
    create = tenants.add_parser("create", help="create a tenant, or update it if it exists")
    create.add_argument("tenant_id")
    create.add_argument("--name", default="")
    create.add_argument("--rpm", type=int, help="requests per minute (unlimited if unset)")
    create.add_argument("--tpm", type=int, help="tokens per minute (unlimited if unset)")
    create.add_argument("--monthly-tokens", type=int, help="monthly token quota (unlimited if unset)")
    create.add_argument("--retention-days", type=int, default=0, help="days text may be kept; 0 keeps none")
    create.add_argument("--max-priority", choices=get_args(Priority), default="interactive")
    create.add_argument("--default-priority", choices=get_args(Priority), default="interactive")
    create.add_argument("--default-profile", choices=get_args(BatchingProfile))
    _cache_options(create)
    create.add_argument("--default-variant", type=_variant_name, help="model variant of requests that name none")
    update = tenants.add_parser("update", help="change the options given of an existing tenant, keep the others")
    update.add_argument("tenant_id")
    update.add_argument("--name")
    update.add_argument("--rpm", type=int, help="requests per minute")
    update.add_argument("--tpm", type=int, help="tokens per minute")
    update.add_argument("--monthly-tokens", type=int, help="monthly token quota")
    update.add_argument("--retention-days", type=int, help="days text may be kept; 0 keeps none")
    update.add_argument("--max-priority", choices=get_args(Priority))
    update.add_argument("--default-priority", choices=get_args(Priority))
    update.add_argument("--default-profile", choices=get_args(BatchingProfile))
    _cache_options(update, default=None)
    update.add_argument("--default-variant", type=_variant_name, help="model variant of requests that name none")
    update.add_argument(
        "--no-default-variant", action="store_true", help="back to each model's default variant from the registry"
    )
    update.add_argument(
        "--no-cache-shared-scope", action="store_true", help="leave the shared scope: back to the tenant's own entries"
    )
    tenants.add_parser("list", help="list tenants")

    keys = sub.add_parser("keys", help="create, list or revoke API keys").add_subparsers(dest="action", required=True)
    key_create = keys.add_parser("create", help="create a key for a tenant and print it (shown only once)")
    key_create.add_argument("tenant_id")
    key_create.add_argument("--name", default="")
    key_list = keys.add_parser("list", help="list keys (never the secrets)")
    key_list.add_argument("tenant_id", nargs="?")
    key_revoke = keys.add_parser("revoke", help="revoke a key by its id")
    key_revoke.add_argument("key_id")

    admin_keys = sub.add_parser("admin-keys", help="create, list or revoke keys of the admin HTTP API")
    admin_actions = admin_keys.add_subparsers(dest="action", required=True)
    admin_create = admin_actions.add_parser("create", help="create an admin key and print it (shown only once)")
    admin_create.add_argument("--name", default="")
    admin_actions.add_parser("list", help="list admin keys (never the secrets)")
    admin_revoke = admin_actions.add_parser("revoke", help="revoke an admin key by its id")
    admin_revoke.add_argument("key_id")

    dev = sub.add_parser("dev-key", help="print the local platform's key, making it (and tenant 'default') if needed")
    dev.add_argument("file", type=Path)
    return parser


def _scope_name(text: str) -> str:
    if not re.fullmatch(r"[a-zA-Z0-9._-]{1,64}", text):
        raise argparse.ArgumentTypeError(f"{text!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return text


def _variant_name(text: str) -> str:
    if not re.fullmatch(VARIANT_NAME_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text!r}: a variant name such as fp32, fp16 or int8")
    return text


def _cache_options(parser: argparse.ArgumentParser, default: bool | None = False) -> None:
    parser.add_argument(
        "--cache-shared-scope",
        metavar="NAME",
        type=_scope_name,
        help="response cache: share entries with every tenant that opted in to the same NAME (default: own entries)",
    )
    parser.add_argument(
        "--cache-sampled",
        action=argparse.BooleanOptionalAction,
        default=default,
        help="response cache: cache sampled answers too (temperature > 0 without a seed); off by default",
    )


_UPDATABLE = {
    "name": "name",
    "rpm": "requests_per_minute",
    "tpm": "tokens_per_minute",
    "monthly_tokens": "monthly_token_quota",
    "retention_days": "retention_days",
    "max_priority": "max_priority",
    "default_priority": "default_priority",
    "default_profile": "default_profile",
    "cache_shared_scope": "cache_shared_scope",
    "cache_sampled": "cache_sampled",
    "default_variant": "default_variant",
}


async def save_tenant(
    directory: TenantDirectory,
    tenant: Tenant,
    before: Tenant | None,
    invalidate_cache: Callable[..., Awaitable[int]],
) -> int | None:
    """Creates or updates a tenant (the CLI and the admin API both call this); ``before`` is the tenant as it was.
    ``invalidate_cache(tenant_id, *shared_scopes)`` drops cached responses: all of the tenant's when its retention is 0
    (no text may be kept anywhere; entries of a shared scope do not record who stored them, so the scope's go too),
    and the old scope's when it leaves a shared scope. Returns how many were dropped, or None when none had to be."""
    await directory.upsert_tenant(tenant)
    old_scope = before.cache_shared_scope if before else None
    if tenant.retention_days == 0:
        return await invalidate_cache(tenant.id, old_scope, tenant.cache_shared_scope)
    if old_scope and old_scope != tenant.cache_shared_scope:
        return await invalidate_cache(tenant.id, old_scope)
    return None


async def _save_and_report(directory: TenantDirectory, tenant: Tenant, before: Tenant | None) -> None:
    dropped = await save_tenant(directory, tenant, before, invalidate_tenant)
    print(f"tenant {tenant.id} saved")
    if dropped is not None:
        print(f"{dropped} cached responses of {tenant.id} dropped")


async def create_key(directory: TenantDirectory, tenant_id: str, name: str = "") -> NewKey | None:
    """A new key of an existing tenant; None if there is no such tenant."""
    if await directory.tenant(tenant_id) is None:
        return None
    return await directory.create_key(tenant_id, name)


def _print_keys(rows: list, tenant_column: bool = True) -> None:  # type: ignore[type-arg]
    for k in rows:
        state = f"revoked {k['revoked_at']:%Y-%m-%d %H:%M}" if k["revoked_at"] else "active"
        owner = f"\t{k['tenant_id']}" if tenant_column else ""
        print(f"{k['id']}{owner}\t{k['key_prefix']}...\t{k['name']!r}\t{state}")


async def run(args: argparse.Namespace, directory: TenantDirectory) -> int:
    if args.command == "tenants" and args.action == "create":
        tenant = Tenant(
            id=args.tenant_id,
            name=args.name,
            requests_per_minute=args.rpm,
            tokens_per_minute=args.tpm,
            monthly_token_quota=args.monthly_tokens,
            retention_days=args.retention_days,
            max_priority=args.max_priority,
            default_priority=args.default_priority,
            default_profile=args.default_profile,
            cache_shared_scope=args.cache_shared_scope,
            cache_sampled=args.cache_sampled,
            default_variant=args.default_variant,
        )
        await _save_and_report(directory, tenant, await directory.tenant(args.tenant_id))
    elif args.command == "tenants" and args.action == "update":
        before = await directory.tenant(args.tenant_id)
        if before is None:
            print(f"error: no tenant {args.tenant_id}; create it first", file=sys.stderr)
            return 1
        changes = {field: getattr(args, arg) for arg, field in _UPDATABLE.items() if getattr(args, arg) is not None}
        if args.no_cache_shared_scope:
            changes["cache_shared_scope"] = None
        if args.no_default_variant:
            changes["default_variant"] = None
        await _save_and_report(directory, dataclasses.replace(before, **changes), before)
    elif args.command == "tenants":
        for t in await directory.tenants():
            print(
                f"{t.id}\tname={t.name!r} rpm={t.requests_per_minute} tpm={t.tokens_per_minute}"
                f" monthly_tokens={t.monthly_token_quota} retention_days={t.retention_days}"
                f" priority={t.default_priority}<= {t.max_priority} profile={t.default_profile}"
                f" cache_shared_scope={t.cache_shared_scope} cache_sampled={t.cache_sampled}"
                f" default_variant={t.default_variant}"
            )
    elif args.command == "keys" and args.action == "create":
        key = await create_key(directory, args.tenant_id, args.name)
        if key is None:
            print(f"error: no tenant {args.tenant_id}; create it first", file=sys.stderr)
            return 1
        print(f"{key.id}\t{key.secret}")
        print("store the key now: it cannot be shown again", file=sys.stderr)
    elif args.command == "keys" and args.action == "list":
        _print_keys(await directory.keys(args.tenant_id))
    elif args.command == "keys":
        if await directory.revoke_key(args.key_id) is None:
            print(f"error: no active key {args.key_id}", file=sys.stderr)
            return 1
        print(f"key {args.key_id} revoked")
    elif args.command == "admin-keys" and args.action == "create":
        key = await directory.create_admin_key(args.name)
        print(f"{key.id}\t{key.secret}")
        print("store the key now: it cannot be shown again", file=sys.stderr)
    elif args.command == "admin-keys" and args.action == "list":
        _print_keys(await directory.admin_keys(), tenant_column=False)
    elif args.command == "admin-keys":
        if await directory.revoke_admin_key(args.key_id) is None:
            print(f"error: no active admin key {args.key_id}", file=sys.stderr)
            return 1
        print(f"admin key {args.key_id} revoked")
    else:
        print(await dev_key(directory, args.file))
    return 0


async def dev_key(directory: TenantDirectory, file: Path) -> str:
    if file.exists():
        secret = file.read_text().strip()
        if await directory.authenticate(secret) is not None:
            return secret
    if await directory.tenant("default") is None:
        await directory.upsert_tenant(Tenant(id="default", name="local development"))
    key = await directory.create_key("default", "dev")
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(key.secret + "\n")
    os.chmod(file, 0o600)
    return key.secret


async def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    pool = await connect_pool(CommonSettings().postgres_dsn)
    try:
        return await run(args, TenantDirectory(pool, ttl_s=0, timeout_s=30))  # a command waits longer than a request
    finally:
        await pool.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
