from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.batcher.scheduling import Policy, Profile
from shared.contracts import BatchingProfile
from shared.settings import consumer_group
from shared.topics import Topics


def input_topic(topics: Topics, model: str) -> str:
    """The one place that names the topic the batcher reads a model's requests from: the prompts the safety stage
    let through."""
    return topics.screened(model)


class ProfileSettings(BaseModel):
    """One batching profile; each field can be set alone, e.g. FERRY_BATCHER_LATENCY__MAX_WAIT_MS=20."""

    max_batch: int = Field(ge=1, description="Most requests in one batch.")
    max_wait_ms: int = Field(ge=0, description="Longest a request is held to fill a batch while workers are saturated.")
    p95_target_s: float = Field(gt=0, description="Latency the profile aims at (95th percentile), for reports.")


class LatencyProfile(ProfileSettings):
    max_batch: int = Field(8, ge=1)
    max_wait_ms: int = Field(50, ge=0)
    p95_target_s: float = Field(2.0, gt=0)


class ThroughputProfile(ProfileSettings):
    max_batch: int = Field(32, ge=1)
    max_wait_ms: int = Field(200, ge=0)
    p95_target_s: float = Field(5.0, gt=0)


class CostProfile(ProfileSettings):
    max_batch: int = Field(64, ge=1)
    max_wait_ms: int = Field(500, ge=0)
    p95_target_s: float = Field(8.0, gt=0)


class BatcherSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FERRY_BATCHER_", env_nested_delimiter="__", extra="ignore")

    host: str = Field("127.0.0.1", description="Where /health and /metrics listen.")
    port: int = Field(8010, description="Port of /health and /metrics.")
    instance_id: str | None = Field(None, description="Id in queue reports; host name and pid if unset.")
    group_id: str = Field(
        default_factory=lambda: consumer_group("batcher"),
        description="Consumer group shared by every batcher instance of a deployment (a restarted batcher resumes "
        "from its committed offsets); <topic prefix>-batcher by default, e.g. ferry-batcher.",
    )
    models: list[str] | None = Field(None, description="Models to batch for; every enabled model when unset.")
    latency: LatencyProfile = Field(default_factory=LatencyProfile, description="The latency profile.")
    throughput: ThroughputProfile = Field(default_factory=ThroughputProfile, description="The throughput profile.")
    cost: CostProfile = Field(default_factory=CostProfile, description="The cost profile.")
    default_profile: BatchingProfile = Field("latency", description="Profile of requests that name none.")
    model_profiles: dict[str, BatchingProfile] = Field(
        default_factory=dict, description="Profile per model id, for requests that name none (JSON)."
    )
    tenant_profiles: dict[str, BatchingProfile] = Field(
        default_factory=dict, description="Profile per tenant id, before the model's (JSON)."
    )
    without_reports: Literal["dispatch", "wait"] = Field(
        "dispatch",
        description="With no fresh worker report, dispatch at once (dispatch) or hold as if workers were saturated "
        "(wait).",
    )
    aging_ms: int = Field(
        1000, gt=0, description="Waiting this long raises a request one priority class (lower classes never starve)."
    )
    batch_token_budget: int = Field(
        32768, ge=1, description="Most tokens (prompt estimate plus max new tokens) in one batch."
    )
    queue_report_interval_s: float = Field(1.0, gt=0, description="How often queue depth is published per model.")
    cancel_memory_s: float = Field(300.0, gt=0, description="How long a cancellation read before its request counts.")
    max_poll_records: int = Field(500, ge=1, description="Most records one poll returns.")
    session_timeout_ms: int = Field(10000, ge=1, description="A batcher silent this long leaves the group.")
    heartbeat_interval_ms: int = Field(3000, ge=1, description="Heartbeats to the group coordinator.")
    poll_ms: int = Field(100, ge=1, description="Longest a poll waits for records when nothing is due sooner.")

    def policy(self, model_contexts: dict[str, int] | None = None) -> Policy:
        profiles = {
            name: Profile(name, p.max_batch, p.max_wait_ms / 1000, p.p95_target_s)
            for name, p in (("latency", self.latency), ("throughput", self.throughput), ("cost", self.cost))
        }
        return Policy(
            profiles=profiles,
            default_profile=self.default_profile,
            model_profiles=dict(self.model_profiles),
            tenant_profiles=dict(self.tenant_profiles),
            aging_s=self.aging_ms / 1000,
            without_reports=self.without_reports,
            batch_token_budget=self.batch_token_budget,
            cancel_memory_s=self.cancel_memory_s,
            model_contexts=dict(model_contexts or {}),
        )
