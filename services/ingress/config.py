from __future__ import annotations

import socket
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.contracts import PromptScreening


class IngressSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FERRY_INGRESS_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address the HTTP API listens on.")
    port: int = Field(8000, description="Port of the HTTP API.")
    instance_id: str = Field(
        default_factory=lambda: socket.gethostname(),
        description="Names this instance's reply topic; stable across restarts, unique among running instances.",
    )
    request_timeout_s: float = Field(
        300.0, gt=0, description="Deadline of a request that sets none (x-ferry-timeout header, seconds)."
    )
    moderation_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Deadline of a moderation that sets none (x-ferry-timeout): screening takes milliseconds, so a "
        "client waits this long at most when the safety stage does not answer.",
    )
    max_request_timeout_s: float = Field(3600.0, gt=0, description="Longest deadline a client may ask for.")
    default_max_tokens: int = Field(512, ge=1, description="max_tokens when the client sends none.")
    model_cache_s: float = Field(5.0, ge=0, description="How long a registry lookup is reused.")
    stored_response_sweep_s: float = Field(
        300.0,
        gt=0,
        description=(
            "How often stored Responses API answers, conversations, files and batches no retention covers are deleted:"
            " one pass an interval, by one of the ingress instances."
        ),
    )
    background_beat_s: float = Field(
        2.0,
        gt=0,
        description="How often this instance beats in Redis and claims background responses whose finisher beats no "
        "more (it is taken as stopped after 3 beats missed).",
    )
    auth_cache_s: float = Field(
        5.0, ge=0, description="How long an API key check is reused; a revoked key works at most this long."
    )
    postgres_timeout_s: float = Field(
        2.0,
        gt=0,
        description="Longest a key check or registry lookup waits for PostgreSQL. Past it, the last answer read is "
        "reused (see auth_outage_grace_s), else the request gets 503 database_unavailable with Retry-After.",
    )
    auth_outage_grace_s: float = Field(
        300.0,
        ge=0,
        description="While PostgreSQL cannot answer, a key checked within this long keeps its last verdict, so its "
        "clients ride out a short outage; a revocation made during the outage cannot be seen until it ends.",
    )
    redis_timeout_s: float = Field(
        0.5, gt=0, description="Longest a rate-limit check waits for Redis before rate_limits_unavailable applies."
    )
    unsettled_refund_after_s: float = Field(
        600.0,
        gt=0,
        description="How long after a request's deadline its token charge may stay unsettled: then its instance "
        "died (or lost Redis) first, and the charge is refunded whole (the tenant's next request does it).",
    )
    rate_limits_unavailable: Literal["allow", "refuse"] = Field(
        "allow",
        description="What a request gets when Redis cannot check its tenant's limits. allow: it is served uncounted "
        "(ferry_ingress_limits_unchecked counts them), so a Redis outage does not stop the API. refuse: 503 "
        "rate_limits_unavailable with Retry-After, for deployments where no request may pass unmetered.",
    )
    publish_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Longest the ingress waits for Kafka to take a request; past it the client gets 503 "
        "queue_unavailable, and a cancel follows in case the record reaches Kafka later.",
    )
    prompt_screening: PromptScreening = Field(
        "before",
        description="before: the safety stage forwards a request to generation once its prompt is screened, so no "
        "blocked or held prompt reaches a model. beside: the request is generated while its prompt is screened, and "
        "its output is held here until the safety stage clears the prompt; a blocked prompt's generation is "
        "cancelled, after using the engine meanwhile. beside pays only where screening and the engine do not share "
        "cores (the engine on a GPU, or on cores of its own): measured in benchmarks/README.md.",
    )
    max_in_flight: int = Field(
        10_000, ge=1, description="Requests this instance holds at once; beyond it new ones get 503 at once."
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Largest request body taken; a larger one gets 413 before it is read. A request's Kafka record "
        "holds at most 1 MiB, and its body's JSON can take up to 6 bytes (a \\u escape) for a character the record "
        "writes in 1 to 3: a body far above the record's limit cannot be queued, and reading and parsing it whole "
        "would take several times its size in memory.",
    )
    max_file_bytes: int = Field(
        100 * 1024 * 1024,
        ge=1024,
        description="Largest file POST /v1/files takes (a batch's input; OpenAI takes up to 200 MB); it is held in "
        "memory while it is stored in PostgreSQL.",
    )
    file_timeout_s: float = Field(
        60.0, gt=0, description="Longest a file's content waits for PostgreSQL (stored, or read back)."
    )
    batch_window_s: float = Field(
        24 * 3600.0,
        gt=0,
        description="How long a batch has to run before it expires (completion_window 24h, the only one OpenAI's API "
        "names): its requests not run by then are in its error file as batch_expired.",
    )
    batch_concurrency: int = Field(
        16,
        ge=1,
        description="Requests of one batch run at once. They go at the cost batching profile and the batch priority, "
        "so interactive traffic comes first; this bounds how much of the platform a batch takes meanwhile.",
    )
    batch_limit_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="The share of each of a tenant's per-minute limits (requests, tokens) that its batches' requests "
        "may use: a batch runs only while the minute's use, the tenant's other requests included, is below it, so "
        "that it leaves the rest of every minute to them. 1: batches may take the whole limits.",
    )
