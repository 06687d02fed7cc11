"""The model registry: which models the platform serves, kept in PostgreSQL and seeded from a config file."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import asyncpg
import yaml
from pydantic import BaseModel, ConfigDict, Field

from shared.db import connect_pool

SEED_FILE = Path(__file__).resolve().parent.parent / "infra" / "models" / "models.yaml"


class ModelRecord(BaseModel):
    """One served model."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(pattern=r"^[a-zA-Z0-9._-]+$", description="The name clients send as `model`.")
    source: str = Field(description="How the worker's model store builds the weights locally.")
    version: str = Field(description="Version of the weights; a change invalidates what depends on them.")
    max_model_len: int = Field(gt=0, description="Most tokens of prompt plus completion.")
    default: bool = Field(False, description="The model `up` serves when none is named.")
    created_at: datetime | None = Field(None, description="When the registry first listed it; None before that.")


def read_seed(path: Path = SEED_FILE) -> list[ModelRecord]:
    return [ModelRecord.model_validate(m) for m in yaml.safe_load(path.read_text())["models"]]


async def enabled_models(dsn: str) -> list[ModelRecord]:
    """Start-up read for services that only need the list once: connects, reads, disconnects."""
    pool = await connect_pool(dsn)
    try:
        return await ModelRegistry(pool).enabled()
    finally:
        await pool.close()


_COLUMNS = "id, source, version, max_model_len, is_default, created_at"  # what ModelRegistry._record reads


class ModelRegistry:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def seed(self, models: list[ModelRecord]) -> None:
        """Upserts the models by id (the config file wins over earlier rows)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE models SET is_default = false WHERE is_default")
            await conn.executemany(
                """INSERT INTO models (id, source, version, max_model_len, is_default) VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (id) DO UPDATE SET source = EXCLUDED.source, version = EXCLUDED.version,
                     max_model_len = EXCLUDED.max_model_len, is_default = EXCLUDED.is_default, updated_at = now()""",
                [(m.id, m.source, m.version, m.max_model_len, m.default) for m in models],
            )

    async def enabled(self) -> list[ModelRecord]:
        rows = await self._pool.fetch(f"SELECT {_COLUMNS} FROM models WHERE enabled ORDER BY id")
        return [self._record(r) for r in rows]

    async def get(self, model_id: str) -> ModelRecord | None:
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM models WHERE id = $1 AND enabled", model_id)
        return self._record(row) if row else None

    @staticmethod
    def _record(row: asyncpg.Record) -> ModelRecord:
        return ModelRecord(
            id=row["id"],
            source=row["source"],
            version=row["version"],
            max_model_len=row["max_model_len"],
            default=row["is_default"],
            created_at=row["created_at"],
        )
