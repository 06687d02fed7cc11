from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.worker.caching import TierPolicy
from shared.settings import consumer_group


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FERRY_WORKER_", extra="ignore")

    host: str = Field("127.0.0.1", description="Where /health listens.")
    port: int = Field(8020, description="Port of /health.")
    model: str | None = Field(
        None, description="Registry id of the model this worker serves; the default model if unset."
    )
    models: list[str] = Field(
        default_factory=list,
        description="Other models (registry ids, a JSON list) this worker may host next to FERRY_WORKER_MODEL: it "
        "reads their batch topics too and loads one on demand (a batch for it) or ahead of demand "
        "(ModelPreloadRequested).",
    )
    memory_budget_bytes: int | None = Field(
        None,
        gt=0,
        description="Memory the hosted models may take together (weights plus KV cache each); loading one more evicts "
        "the least recently used idle warm or cold models. Unset: no limit (FERRY_WORKER_MEMORY_BUDGET_GB also works).",
    )
    memory_budget_gb: float | None = Field(None, gt=0, description="The budget in GiB, if the bytes are not set.")
    models_dir: Path = Field(Path.home() / ".cache" / "ferry" / "models", description="Where built model folders live.")
    group_prefix: str = Field(
        default_factory=lambda: consumer_group("worker."),
        description="Consumer group is this prefix plus the model id; <topic prefix>-worker. by default.",
    )
    kv_cache_gib: float = Field(1.0, gt=0, description="KV cache size on CPU, in GiB.")
    max_num_seqs: int = Field(64, ge=1, description="Most sequences the engine runs at once.")
    engine_cpu_threads: int | None = Field(
        None,
        ge=1,
        description="OpenMP threads of each model on CPU (ignored on a GPU); unset: one per core. Fewer threads "
        "leave cores to the worker's Kafka, screening and vLLM front end, which pays off for models whose steps are "
        "short (on 2 cores, 1 thread gives the tiny model 1.5-1.8x the tokens/s through the worker) and costs models "
        "whose steps are long (SmolLM2-135M is 20-30% slower on 1 thread): benchmarks/README.md.",
    )
    engine_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="How far below the services' the engine process's CPU priority is (Linux nice), on CPU only "
        "(ignored on a GPU): when the cores are contended, the services' short bursts (Kafka, screening, replies, the "
        "next request) run at once instead of waiting behind the model's threads, which still get every cycle left. "
        "0: the same priority. Measured in benchmarks/reports/engine-nice-ab.",
    )
    engine_process_server: bool = Field(
        True,
        description="On CPU, start each model's vLLM engine process from a server process that has imported torch and "
        "vLLM already (multiprocessing's forkserver, started with the worker), instead of vLLM's spawn, which imports "
        "them again for every model: a warm reload or an on-demand load takes seconds less (benchmarks/README.md).",
    )
    coalesce_ms: int = Field(
        25, ge=0, description="Deltas produced within this window go out as one Kafka record (the first goes at once)."
    )
    session_timeout_ms: int = Field(
        6000,
        ge=1000,
        description="Kafka session timeout: a worker that stops heartbeating loses its partitions after this long "
        "(the broker's group.min.session.timeout.ms, 6 s by default, is the floor).",
    )
    heartbeat_interval_ms: int = Field(1000, ge=100, description="Kafka consumer heartbeat interval.")
    max_poll_interval_ms: int = Field(
        60000, ge=1000, description="Kafka max poll interval; consuming never waits for generation, so it stays short."
    )
    commit_interval_ms: int = Field(
        100, ge=0, description="Finished batches' offsets are committed at most this often."
    )
    max_in_flight: int = Field(
        256,
        ge=1,
        description="Requests taken from Kafka at once (generating or waiting in the engine); above it consuming "
        "pauses, so other workers of the group get the rest.",
    )
    drain_seconds: float = Field(
        20.0, ge=0, description="On SIGTERM, how long in-flight requests may finish before the rest are handed back."
    )
    status_interval_s: float = Field(2.0, gt=0, description="Seconds between WorkerStatusReported heartbeats.")
    worker_id: str | None = Field(None, description="Id in heartbeats; host, port and pid if unset.")
    variant: str | None = Field(
        None,
        description="Variant of the model to load (fp32, fp16, int8, ...; see services/worker/variants.py); unset: "
        "float32 on CPU, vLLM's choice on GPU.",
    )
    variants: list[str] = Field(
        default_factory=list,
        description='Other variants (a JSON list, e.g. ["int8"]) this worker may load on demand for a request or a '
        "preload that asks for one; each loaded variant is an engine of its own within the memory budget.",
    )
    demand_flush_s: float = Field(30.0, gt=0, description="Seconds between writes of served-request counts.")
    tier_recompute_s: float = Field(
        300.0,
        ge=0,
        description="Seconds between recomputations of every model's tier from the recorded demand (checked after "
        "each demand write; every worker does it, and the result is the same); 0: only `python -m "
        "services.worker.tiers` recomputes them.",
    )
    tier_hot_above: float = Field(1000, ge=0, description="Requests per hour above which a model is hot.")
    tier_warm_above: float = Field(100, ge=0, description="Requests per hour above which a model is warm (else cold).")
    tier_hot_replicas: int = Field(3, ge=0, description="Replicas a hot model calls for.")
    tier_warm_replicas: int = Field(2, ge=0, description="Replicas a warm model calls for.")
    tier_cold_replicas: int = Field(0, ge=0, description="Replicas a cold model calls for (loaded on demand).")

    def budget_bytes(self) -> int | None:
        if self.memory_budget_bytes is not None:
            return self.memory_budget_bytes
        return int(self.memory_budget_gb * (1 << 30)) if self.memory_budget_gb is not None else None

    def tier_policy(self) -> TierPolicy:
        return TierPolicy(
            hot_above=self.tier_hot_above,
            warm_above=self.tier_warm_above,
            hot_replicas=self.tier_hot_replicas,
            warm_replicas=self.tier_warm_replicas,
            cold_replicas=self.tier_cold_replicas,
        )
