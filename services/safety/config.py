from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.settings import consumer_group


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
    max_batch_size: int = Field(16, ge=1, description="Most requests screened together in one poll.")
    max_wait_ms: int = Field(5, ge=0, description="Longest a poll waits for more requests.")
    models: list[str] | None = Field(None, description="Models to screen for; every enabled model when unset.")
    deny_terms: list[str] = Field(default_factory=list, description="Terms refused anywhere (category deny_list).")
    embedding: bool = Field(True, description="Use the MiniLM embedding classifier (about 10 ms per prompt on CPU).")
    injection: bool = Field(True, description="Use the guardify prompt-injection classifier.")
    torch_threads: int = Field(1, ge=1, description="CPU threads of the embedding model.")
    guard_model: str | None = Field(
        None, description="Model (served by this platform) asked a guard question per prompt; off when unset."
    )
    guard_base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI API base URL of the guard model.")
    guard_timeout_s: float = Field(10.0, gt=0, description="Longest the guard model may take per prompt.")
    output_screening: bool = Field(
        True, description="Workers screen outputs (rules, plus the embedding model when output_embedding is set)."
    )
    output_embedding: bool = Field(
        False,
        description="Workers also run the embedding classifier on outputs (harm categories). Off by default: on a "
        "CPU worker it competes with the engine for the same cores (about 10 ms per window).",
    )
    output_window_chars: int = Field(400, ge=50, description="Characters of the sliding window screened on outputs.")
    output_every_chars: int = Field(120, ge=1, description="New characters between two screenings of an output.")
    session_hours: float = Field(8.0, gt=0, description="How long a reviewer's sign-in lasts.")
    secure_cookies: bool = Field(False, description="Mark the session cookie Secure (serve the UI over HTTPS).")
