from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.cache.policy import CONTENT_CLASSES, MAX_TTL_S, MIN_TTL_S, ContentClass

DEFAULT_TTL_S: dict[ContentClass, int] = {
    "greedy": 24 * 3600,  # temperature 0: the same request gives the same answer until the model changes
    "seeded": 12 * 3600,  # a fixed seed: reproducible on the same engine build, less so across upgrades
    "conversation": 2 * 3600,  # multi-turn chats rarely repeat; keep them briefly
    "sampled": 3600,  # sampled output a tenant opted in to caching: one sample stands in for many, briefly
}


class CacheSettings(BaseSettings):
    """The response cache, read by the ingress and the ops command (``FERRY_CACHE_`` prefix)."""

    model_config = SettingsConfigDict(env_prefix="FERRY_CACHE_", extra="ignore")

    enabled: bool = Field(True, description="Look up and store responses; off answers every request live.")
    key_prefix: str | None = Field(
        None, description="Prefix of every Redis key; unset means the deployment's topic prefix plus 'cache:'."
    )
    ttl_s: dict[ContentClass, int] = Field(
        default_factory=lambda: dict(DEFAULT_TTL_S),
        description="Seconds an entry lives, per content class (greedy, seeded, conversation, sampled); 1-24 h. "
        "As JSON, e.g. FERRY_CACHE_TTL_S='{\"greedy\": 3600}'; classes not given keep their default.",
    )
    max_entry_bytes: int = Field(1 << 20, ge=1, description="Completions larger than this are not stored.")
    redis_timeout_s: float = Field(
        0.25, gt=0, description="Longest a Redis call may take before the request is answered live instead."
    )
    stats_interval_s: float = Field(30.0, gt=0, description="How often Redis-wide figures (evictions) are read.")

    @field_validator("ttl_s")
    @classmethod
    def _ttl_in_range(cls, v: dict[ContentClass, int]) -> dict[ContentClass, int]:
        for name, seconds in v.items():
            if not MIN_TTL_S <= seconds <= MAX_TTL_S:
                raise ValueError(f"ttl of {name} must be between {MIN_TTL_S} and {MAX_TTL_S} seconds, not {seconds}")
        return {c: v.get(c, DEFAULT_TTL_S[c]) for c in CONTENT_CLASSES}

    def prefix(self, topic_prefix: str) -> str:
        return self.key_prefix if self.key_prefix is not None else f"{topic_prefix}cache:"
