from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.settings import consumer_group

DEFAULT_EMBEDDER_CACHE = Path.home() / ".cache" / "ferry" / "safety"
"""Where the embedding model exported to ONNX is kept (made once, from the packaged weights)."""


class SafetySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FERRY_SAFETY_", extra="ignore")

    host: str = Field("127.0.0.1", description="Where /health, /metrics and the review UI (/review) listen.")
    port: int = Field(8040, description="Port of /health, /metrics and the review UI.")
    group_id: str = Field(
        default_factory=lambda: consumer_group("safety"),
        description="Consumer group of the prompt screening stage; <topic prefix>-safety by default.",
    )
    review_group_id: str = Field(
        default_factory=lambda: consumer_group("safety-review"),
        description="Consumer group that persists flagged items; <topic prefix>-safety-review by default.",
    )
    moderation_group_id: str = Field(
        default_factory=lambda: consumer_group("safety-moderations"),
        description="Consumer group of the moderation requests (<prefix>moderations); "
        "<topic prefix>-safety-moderations by default.",
    )
    max_batch_size: int = Field(16, ge=1, description="Most requests screened together in one poll.")
    max_wait_ms: int = Field(5, ge=0, description="Longest a poll waits for more requests.")
    models: list[str] | None = Field(None, description="Models to screen for; every enabled model when unset.")
    models_dir: Path = Field(
        Path.home() / ".cache" / "ferry" / "models",
        description="The model folders the workers build (their FERRY_WORKER_MODELS_DIR), read for each model's "
        "tokenizer: a prompt given as token ids is screened as the text they decode to. A model whose folder is not "
        "there gets such prompts refused (retryable screening_unavailable).",
    )
    deny_terms: list[str] = Field(default_factory=list, description="Terms refused anywhere (category deny_list).")
    embedding: bool = Field(
        True,
        description="Use the MiniLM embedding classifier (per prompt on one core of the 3 December machine: 21 ms in "
        "float32 on PyTorch, 12 ms in int8 on PyTorch, 5 ms in int8 on ONNX Runtime).",
    )
    embedding_int8: bool = Field(
        True,
        description="Quantize the embedding model's linear layers to int8 (on either runtime; on the held-out set one "
        "of 40 positives fewer caught than float32, see README).",
    )
    embedding_runtime: Literal["onnx", "torch"] = Field(
        "onnx",
        description="What runs the embedding model: ONNX Runtime (exported once from the packaged weights into "
        "embedding_cache_dir; about 1.6x less CPU per prompt than torch in int8, see README) or PyTorch.",
    )
    embedding_max_windows: int = Field(
        16,
        ge=1,
        description="Most windows of 254 word pieces the embedding model reads of one text (the first ones; about "
        "45 ms of one core each here): a bound on one prompt's cost. 16 hold about 3,600 word pieces; the rules and "
        "the injection classifier read the whole text.",
    )
    embedding_cache_dir: Path = Field(
        DEFAULT_EMBEDDER_CACHE, description="Where the embedding model exported to ONNX is kept."
    )
    injection: bool = Field(True, description="Use the guardify prompt-injection classifier.")
    torch_threads: int = Field(
        1, ge=1, description="CPU threads of the embedding model in the safety service (either runtime)."
    )
    screening_cache_ttl_s: float = Field(
        600.0,
        description="How long model scores of a prompt are reused for the same tenant's identical prompt: 0 turns the "
        "cache off, else 300 to 3600 s. Keyed by a keyed digest, never the text.",
    )
    screening_cache_entries: int = Field(50_000, ge=1, description="Most prompts the screening cache remembers.")
    guard_model: str | None = Field(
        None,
        description="Model served by this platform that is asked a guard question per prompt (through the platform's "
        "own Kafka request path); off when unset.",
    )
    guard_tenants: list[str] | None = Field(
        None, description="Tenants whose prompts the guard model checks; every tenant when unset."
    )
    guard_timeout_s: float = Field(5.0, gt=0, description="Longest the guard model may take per prompt.")
    guard_max_tokens: int = Field(16, ge=1, description="Tokens the guard model may answer with.")
    guard_fallback: Literal["allow", "release", "hold", "block"] = Field(
        "release",
        description="Action when the guard's answer is unreadable, failed or late (category guard_unverified): allow, "
        "release-then-review, hold for review, or block. Counted in ferry_safety_guard_checks.",
    )
    instance_id: str = Field(
        default_factory=socket.gethostname,
        description="Names this instance's reply topic for guard answers; stable across restarts, so that each start "
        "does not leave a topic behind. Instances sharing one read each other's answers too, and ignore them.",
    )
    sweep_interval_s: float = Field(
        30.0, gt=0, description="How often held items past their deadline and expired retained texts are handled."
    )
    default_retention_days: int = Field(
        30, ge=1, description="Days retained text is kept when a request carries retain_text without retention_days."
    )
    output_screening: bool = Field(
        True, description="Workers screen outputs (rules, plus the embedding model as output_embedding* say)."
    )
    output_embedding: bool = Field(
        False,
        description="Workers also run the embedding classifier on every sliding window of an output (harm categories)."
        " Off by default: a window check costs about as much as the final one, several times per completion.",
    )
    output_embedding_final: bool = Field(
        True,
        description="Workers run the embedding classifier on each completed output, once (about 1% of a completion's "
        "CPU time on this machine, see README); windows use rules only unless output_embedding is set.",
    )
    output_window_chars: int = Field(400, ge=50, description="Characters of the sliding window screened on outputs.")
    output_every_chars: int = Field(120, ge=1, description="New characters between two screenings of an output.")
    session_hours: float = Field(8.0, gt=0, description="How long a reviewer's sign-in lasts.")
    secure_cookies: bool = Field(False, description="Mark the session cookie Secure (serve the UI over HTTPS).")

    @field_validator("screening_cache_ttl_s")
    @classmethod
    def _cache_ttl(cls, v: float) -> float:
        if v != 0 and not 300 <= v <= 3600:
            raise ValueError("screening_cache_ttl_s must be 0 (off) or between 300 and 3600 seconds")
        return v
