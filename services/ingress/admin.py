"""Tenants and API keys from the command line: ``python -m services.ingress.admin --help``.

tenants create acme --name "Acme" --rpm 600 --tpm 200000 --retention-days 0
tenants list
keys create acme --name ci         prints the key once; only its SHA-256 digest is stored
keys list [acme]
keys revoke key_0123abcd
dev-key .state/dev-api-key         the local platform's key: reused while valid, else made (tenant "default")
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import get_args

from services.ingress.adapters import TenantDirectory
from services.ingress.tenants import Tenant
from shared.contracts import BatchingProfile, Priority
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
    tenants.add_parser("list", help="list tenants")

    keys = sub.add_parser("keys", help="create, list or revoke API keys").add_subparsers(dest="action", required=True)
    key_create = keys.add_parser("create", help="create a key for a tenant and print it (shown only once)")
    key_create.add_argument("tenant_id")
    key_create.add_argument("--name", default="")
    key_list = keys.add_parser("list", help="list keys (never the secrets)")
    key_list.add_argument("tenant_id", nargs="?")
    key_revoke = keys.add_parser("revoke", help="revoke a key by its id")
    key_revoke.add_argument("key_id")

    dev = sub.add_parser("dev-key", help="print the local platform's key, making it (and tenant 'default') if needed")
    dev.add_argument("file", type=Path)
    return parser


async def run(args: argparse.Namespace, directory: TenantDirectory) -> int:
    if args.command == "tenants" and args.action == "create":
        await directory.upsert_tenant(
            Tenant(
                id=args.tenant_id,
                name=args.name,
                requests_per_minute=args.rpm,
                tokens_per_minute=args.tpm,
                monthly_token_quota=args.monthly_tokens,
                retention_days=args.retention_days,
                max_priority=args.max_priority,
                default_priority=args.default_priority,
                default_profile=args.default_profile,
            )
        )
        print(f"tenant {args.tenant_id} saved")
    elif args.command == "tenants":
        for t in await directory.tenants():
            print(
                f"{t.id}\tname={t.name!r} rpm={t.requests_per_minute} tpm={t.tokens_per_minute}"
                f" monthly_tokens={t.monthly_token_quota} retention_days={t.retention_days}"
                f" priority={t.default_priority}<= {t.max_priority} profile={t.default_profile}"
            )
    elif args.command == "keys" and args.action == "create":
        if await directory.tenant(args.tenant_id) is None:
            print(f"error: no tenant {args.tenant_id}; create it first", file=sys.stderr)
            return 1
        key = await directory.create_key(args.tenant_id, args.name)
        print(f"{key.id}\t{key.secret}")
        print("store the key now: it cannot be shown again", file=sys.stderr)
    elif args.command == "keys" and args.action == "list":
        for k in await directory.keys(args.tenant_id):
            state = f"revoked {k['revoked_at']:%Y-%m-%d %H:%M}" if k["revoked_at"] else "active"
            print(f"{k['id']}\t{k['tenant_id']}\t{k['key_prefix']}...\t{k['name']!r}\t{state}")
    elif args.command == "keys":
        if not await directory.revoke_key(args.key_id):
            print(f"error: no active key {args.key_id}", file=sys.stderr)
            return 1
        print(f"key {args.key_id} revoked")
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
        return await run(args, TenantDirectory(pool, ttl_s=0))
    finally:
        await pool.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
