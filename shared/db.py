"""PostgreSQL plumbing: waiting for the server, the connection pool and schema migrations (plain SQL files)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "infra" / "postgres" / "migrations"
_MIGRATION_LOCK = 0x66657272  # advisory lock id ("ferr"): one migrator at a time when services start together


async def connect_pool(dsn: str, wait_seconds: float = 60, **kwargs: object) -> asyncpg.Pool:
    """Pre-start step: retries until PostgreSQL accepts connections, then returns a pool."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        try:
            return await asyncpg.create_pool(dsn, min_size=1, max_size=10, **kwargs)
        except (OSError, asyncpg.CannotConnectNowError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def migrate(pool: asyncpg.Pool, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Applies the ``NNNN_name.sql`` files not applied yet, each in its own transaction; returns their names."""
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            for path in sorted(directory.glob("*.sql")):
                if path.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", path.name)
                applied_now.append(path.name)
                logger.info("applied migration %s", path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


@contextlib.asynccontextmanager
async def scratch_database(dsn: str, name: str, migrations: Path = MIGRATIONS_DIR) -> AsyncIterator[asyncpg.Pool]:
    """A database of its own on ``dsn``'s server, named ``name`` plus a random suffix, migrated (by the files in
    ``migrations``); dropped afterwards. For tests and measurements that must not touch the platform's data."""
    database = f"{name}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{database}"')
    try:
        pool = await connect_pool(dsn.rsplit("/", 1)[0] + "/" + database)
        try:
            await migrate(pool, migrations)
            yield pool
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
