"""The model registry: which models the platform serves, kept in PostgreSQL and seeded from a config file."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import asyncpg
import yaml
from pydantic import BaseModel, ConfigDict, Field

from shared.db import connect_pool

SEED_FILE = Path(__file__).resolve().parent.parent / "infra" / "models" / "models.yaml"


PARSER_NAME = r"^[a-zA-Z0-9_]+$"
"""What a name of one of vLLM's parsers looks like."""


class ModelRecord(BaseModel):
    """One served model."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(pattern=r"^[a-zA-Z0-9._-]+$", description="The name clients send as `model`.")
    source: str = Field(description="How the worker's model store builds the weights locally.")
    version: str = Field(description="Version of the weights; a change invalidates what depends on them.")
    max_model_len: int = Field(gt=0, description="Most tokens of prompt plus completion.")
    default: bool = Field(False, description="The model `up` serves when none is named.")
    tool_call_parser: str | None = Field(
        None,
        pattern=PARSER_NAME,
        description="vLLM's parser of this model's tool calls, by the name vLLM's server takes as "
        "--tool-call-parser (xlam, step3, ...); it then reads the model's chats instead of ferry's readers "
        "(services/worker/vllm_parsing.py). None: ferry reads the format the model's chat template teaches.",
    )
    reasoning_parser: str | None = Field(
        None,
        pattern=PARSER_NAME,
        description="vLLM's parser of this model's thinking, by the name vLLM's server takes as --reasoning-parser; "
        "as tool_call_parser. None: ferry reads the think blocks the model's chat template writes.",
    )
    created_at: datetime | None = Field(None, description="When the registry first listed it; None before that.")


def read_seed(path: Path = SEED_FILE) -> list[ModelRecord]:
    return [ModelRecord.model_validate(m) for m in yaml.safe_load(path.read_text())["models"]]


async def enabled_models(dsn: str, wait_seconds: float = 60) -> list[ModelRecord]:
    """Start-up read for services that only need the list once: connects (waiting up to ``wait_seconds`` for
    PostgreSQL), reads, disconnects."""
    pool = await connect_pool(dsn, wait_seconds)
    try:
        return await ModelRegistry(pool).enabled()
    finally:
        await pool.close()


# what ModelRegistry._record reads
_COLUMNS = "id, source, version, max_model_len, is_default, created_at, tool_call_parser, reasoning_parser"


class ModelRegistry:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def seed(self, models: list[ModelRecord]) -> None:
        """Upserts the models by id (the config file wins over earlier rows)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE models SET is_default = false WHERE is_default")
            await conn.executemany(
                """INSERT INTO models
                     (id, source, version, max_model_len, is_default, tool_call_parser, reasoning_parser)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)
                   ON CONFLICT (id) DO UPDATE SET source = EXCLUDED.source, version = EXCLUDED.version,
                     max_model_len = EXCLUDED.max_model_len, is_default = EXCLUDED.is_default,
                     tool_call_parser = EXCLUDED.tool_call_parser, reasoning_parser = EXCLUDED.reasoning_parser,
                     updated_at = now()""",
                [
                    (m.id, m.source, m.version, m.max_model_len, m.default, m.tool_call_parser, m.reasoning_parser)
                    for m in models
                ],
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
            tool_call_parser=row["tool_call_parser"],
            reasoning_parser=row["reasoning_parser"],
        )
