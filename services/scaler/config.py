from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.scaler.forecast import ForecastConfig
from services.scaler.policy import PolicyConfig, TierConfig


class ScalerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FERRY_SCALER_", extra="ignore")

    host: str = Field("127.0.0.1", description="Where /health and /metrics listen.")
    port: int = Field(8090, description="Port of /health and /metrics.")
    grpc_host: str = Field("127.0.0.1", description="Where KEDA's external scaler gRPC service listens.")
    grpc_port: int = Field(9090, description="Port of the external scaler gRPC service; 0 turns it off.")
    models: list[str] | None = Field(None, description="Models to scale; every enabled model when unset.")
    interval_s: float = Field(5.0, gt=0, description="Seconds between two decisions.")
    predictive: bool = Field(True, description="Scale ahead of the forecast; false is reactive only.")

    supervise: bool = Field(
        False,
        description="Start and stop worker processes on this machine. Off by default: the scaler then only decides, "
        "records, exports metrics and serves KEDA. It only ever stops workers it started itself.",
    )
    worker_control: bool = Field(
        False,
        description="Publish ModelPreloadRequested / ModelEvictionRequested on tier changes, wake-ups, scale-to-zero. "
        "Off by default so a scaler that only advises never makes static workers unload their model.",
    )
    worker_models_dir: Path | None = Field(None, description="FERRY_WORKER_MODELS_DIR of the workers it starts.")
    worker_env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment of the workers it starts (JSON object)."
    )
    worker_logs_dir: Path = Field(Path(".state/logs"), description="Where the started workers' logs go.")
    worker_ready_s: float = Field(300.0, gt=0, description="A started worker not healthy in this long is stopped.")
    drain_s: float = Field(60.0, gt=0, description="Seconds a stopped worker gets to drain before it is killed.")

    target_backlog_tokens: float = Field(4000.0, gt=0, description="Backlog tokens one replica should hold at most.")
    replica_tokens_per_second: float = Field(200.0, gt=0, description="Tokens per second one replica serves.")
    utilization_target: float = Field(0.8, gt=0, le=1, description="Predictive sizing's share of capacity used.")
    horizon_s: float = Field(1200.0, ge=0, description="Seconds the predictive part looks ahead.")
    up_window_s: float = Field(30.0, ge=0, description="Scale-up stabilization window.")
    down_window_s: float = Field(300.0, ge=0, description="Scale-down stabilization window.")
    up_cooldown_s: float = Field(30.0, ge=0, description="No scale-up this long after the previous one.")
    down_cooldown_s: float = Field(120.0, ge=0, description="No scale-down this long after any change.")
    zero_after_s: float = Field(600.0, ge=0, description="A cold model idle this long goes to zero replicas.")
    max_replicas: int = Field(3, ge=1, description="Most replicas of any model (its batch topic's partitions).")
    min_replicas: dict[str, int] = Field(
        default_factory=dict, description="Per-model floor, overriding the tier's (JSON object model -> replicas)."
    )
    max_replicas_per_model: dict[str, int] = Field(
        default_factory=dict, description="Per-model ceiling (JSON object model -> replicas)."
    )
    hot_above_per_hour: float = Field(1000.0, ge=0, description="Requests per hour above which a model is hot.")
    cold_at_most_per_hour: float = Field(100.0, ge=0, description="Requests per hour at or below which it is cold.")
    tier_min_replicas: dict[str, int] = Field(
        default_factory=lambda: {"hot": 1, "warm": 1, "cold": 0}, description="Replicas kept per tier."
    )
    tokens_per_request: float = Field(300.0, gt=0, description="Tokens of a request before any has been seen.")
    forecast_alpha: float = Field(0.3, gt=0, le=1, description="Smoothing weight of the forecast's level.")
    history_days: int = Field(28, ge=1, description="Days of demand history the forecast learns from at start.")
    records_kept_days: int = Field(
        90,
        ge=1,
        description="Days of demand history, forecasts and decisions kept in PostgreSQL (at least history_days); "
        "older rows are deleted once an hour, so the tables do not grow for as long as the scaler runs.",
    )
    bucket_s: int = Field(60, ge=1, description="Seconds per demand-history bucket in PostgreSQL.")
    peek_records: int = Field(200, ge=0, description="Lagging records read per poll to weigh the backlog in tokens.")
    status_max_age_s: float = Field(30.0, gt=0, description="Older queue reports and heartbeats are ignored.")

    @model_validator(mode="after")
    def _keeps_the_history_it_learns_from(self) -> ScalerSettings:
        if self.records_kept_days < self.history_days:
            raise ValueError(
                f"records_kept_days ({self.records_kept_days}) is below history_days ({self.history_days}): "
                "the forecast would learn from history already deleted"
            )
        return self

    def policy_config(self, model: str) -> PolicyConfig:
        return PolicyConfig(
            target_backlog_tokens=self.target_backlog_tokens,
            replica_tokens_per_second=self.replica_tokens_per_second,
            utilization_target=self.utilization_target,
            horizon=timedelta(seconds=self.horizon_s),
            up_window=timedelta(seconds=self.up_window_s),
            down_window=timedelta(seconds=self.down_window_s),
            up_cooldown=timedelta(seconds=self.up_cooldown_s),
            down_cooldown=timedelta(seconds=self.down_cooldown_s),
            zero_after=timedelta(seconds=self.zero_after_s),
            min_replicas=self.min_replicas.get(model),
            max_replicas=self.max_replicas_per_model.get(model, self.max_replicas),
            tiers=TierConfig(
                hot_above=self.hot_above_per_hour,
                cold_at_most=self.cold_at_most_per_hour,
                min_replicas=self.tier_min_replicas,
            ),
        )

    def forecast_config(self) -> ForecastConfig:
        return ForecastConfig(alpha=self.forecast_alpha)
