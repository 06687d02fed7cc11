"""Settings common to every service (12-factor, ``FERRY_`` prefix). Each service adds its own class with its own prefix
and reads these through ``CommonSettings()``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.topics import Topics

_DEV_PASSWORD = "ferry"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FERRY_", extra="ignore")

    environment: Literal["development", "production"] = Field(
        "development", description="production refuses dev secrets."
    )
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated.")
    topic_prefix: str = Field("ferry.", description="Prefix of every topic name.")
    topic_partitions: int = Field(
        3, ge=1, description="Partitions of the request and batch topics the platform creates."
    )
    postgres_dsn: str = Field(
        f"postgresql://ferry:{_DEV_PASSWORD}@127.0.0.1:55432/ferry", description="PostgreSQL connection string."
    )
    redis_url: str = Field("redis://127.0.0.1:56379/0", description="Redis URL.")
    otel_exporter: Literal["none", "console", "otlp"] = Field("console", description="Where traces go.")
    otel_console_path: str | None = Field(
        None, description="File the console exporter appends JSON spans to; stderr if unset."
    )
    otel_endpoint: str | None = Field(None, description="OTLP/HTTP endpoint, e.g. http://127.0.0.1:4318/v1/traces.")
    log_level: str = Field("INFO", description="Log level of the platform's own loggers.")
    reply_topic_wait_s: float = Field(
        10.0,
        gt=0,
        description="How long a request's reply topic may take to appear in Kafka's metadata (its requester creates "
        "it, or the brokers on first use) before the request is dead-lettered as unanswerable; a service that waited "
        "for it held back the rest of its work meanwhile (aiokafka's own wait is its 40 s request timeout).",
    )

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @model_validator(mode="after")
    def _no_dev_secrets_in_production(self) -> CommonSettings:
        if self.environment == "production" and f":{_DEV_PASSWORD}@" in self.postgres_dsn:
            raise ValueError("FERRY_POSTGRES_DSN uses the development password; set a real one in production")
        return self


def consumer_group(name: str, topic_prefix: str | None = None) -> str:
    """The default of every consumer-group setting: named after the topic prefix (``ferry.`` gives ``ferry-<name>``),
    so deployments and test runs that share a Kafka cluster, each with its own prefix, never join each other's
    groups. The prefix is FERRY_TOPIC_PREFIX's unless given."""
    prefix = CommonSettings().topic_prefix if topic_prefix is None else topic_prefix
    return prefix.rstrip(".") + "-" + name
