"""Operator commands: ``python -m services.safety.admin``
add-user NAME --role reviewer|admin [--unmask]   (password from FERRY_SAFETY_NEW_PASSWORD or asked)
set-policy TENANT FILE.json                       ('*' sets the default for tenants without their own)
export-labels [--since ISO] [--out FILE]          decided items as JSON lines, to retrain the classifiers
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from services.safety.policy import Policy
from services.safety.store import PolicyStore, ReviewStore, UserStore
from shared.db import connect_pool
from shared.settings import CommonSettings


def export_rows(items: list[dict]) -> list[dict]:  # type: ignore[type-arg]
    """One label per decided item: the text when the tenant retained it, else the masked snippet (marked so)."""
    return [
        {
            "text": item["text"] if item["text"] is not None else item["snippet"],
            "masked": item["text"] is None,
            "categories": list(item["labels"] or []),
            "flagged_categories": list(item["categories"]),
            "scores": item["scores"],
            "stage": item["stage"],
            "decision": item["decision"],
            "source": f"review:{item['id']}:{item['decided_by']}",
            "request_id": item["request_id"],
            "decided_at": item["decided_at"].isoformat(),
        }
        for item in items
    ]


def read_policy(path: Path) -> Policy:
    """The policy in a JSON file, or an exit naming what is wrong with it."""
    try:
        return Policy.model_validate_json(path.read_text())
    except OSError as exc:
        sys.exit(f"cannot read {path}: {exc.strerror}")
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'file'}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        sys.exit(f"{path} is not a policy: {problems}")


async def run(args: argparse.Namespace) -> None:
    pool = await connect_pool(CommonSettings().postgres_dsn)
    try:
        if args.command == "add-user":
            password = os.environ.get("FERRY_SAFETY_NEW_PASSWORD") or getpass.getpass("password: ")
            if len(password) < 8:
                sys.exit("the password needs at least 8 characters")
            await UserStore(pool).add(args.name, password, args.role, args.unmask, actor="cli")
        elif args.command == "set-policy":
            await PolicyStore(pool).put(args.tenant, read_policy(Path(args.file)))
        elif args.command == "export-labels":
            since = datetime.fromisoformat(args.since) if args.since else None
            rows = export_rows(await ReviewStore(pool).decided(since))
            text = "".join(json.dumps(r) + "\n" for r in rows)
            if args.out:
                Path(args.out).write_text(text)
                print(f"{len(rows)} labels written to {args.out}")
            else:
                sys.stdout.write(text)
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.safety.admin", description="ferry safety: reviewers, policies, labels"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser(
        "add-user",
        help="add a reviewer or an admin of the review UI",
        description="Adds a user of the review UI. The password (at least 8 characters) comes from "
        "FERRY_SAFETY_NEW_PASSWORD, or is asked for.",
    )
    add.add_argument("name")
    add.add_argument("--role", choices=["reviewer", "admin"], default="reviewer")
    add.add_argument("--unmask", action="store_true", help="may see retained text without masking")
    pol = sub.add_parser(
        "set-policy",
        help="set a tenant's screening policy from a JSON file",
        description="Sets a tenant's screening policy ('*': the default of tenants without their own) from a JSON "
        "file with prompt and output rules per category (services/safety/policy.py).",
    )
    pol.add_argument("tenant")
    pol.add_argument("file")
    exp = sub.add_parser("export-labels", help="decided review items as JSON lines, to retrain the classifiers")
    exp.add_argument("--since", help="only items decided at or after this ISO time")
    exp.add_argument("--out", help="the file to write; standard output when left out")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
