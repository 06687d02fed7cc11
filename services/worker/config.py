from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FERRY_WORKER_", extra="ignore")

    host: str = Field("127.0.0.1", description="Where /health listens.")
    port: int = Field(8020, description="Port of /health.")
    model: str | None = Field(
        None, description="Registry id of the model this worker serves; the default model if unset."
    )
    models_dir: Path = Field(Path.home() / ".cache" / "ferry" / "models", description="Where built model folders live.")
    group_prefix: str = Field("ferry-worker.", description="Consumer group is this prefix plus the model id.")
    kv_cache_gib: float = Field(1.0, gt=0, description="KV cache size on CPU, in GiB.")
    max_num_seqs: int = Field(64, ge=1, description="Most sequences the engine runs at once.")
    coalesce_ms: int = Field(
        25, ge=0, description="Deltas produced within this window go out as one Kafka record (the first goes at once)."
    )
