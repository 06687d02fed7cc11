from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BatcherSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FERRY_BATCHER_", extra="ignore")

    host: str = Field("127.0.0.1", description="Where /health listens.")
    port: int = Field(8010, description="Port of /health.")
    group_id: str = Field("ferry-batcher", description="Consumer group shared by every batcher instance.")
    max_batch_size: int = Field(8, ge=1, description="Most requests in one batch.")
    max_wait_ms: int = Field(50, ge=0, description="Longest a poll waits for a batch to fill.")
    models: list[str] | None = Field(None, description="Models to batch for; every enabled model when unset.")
