"""Messages that cross Kafka. One pydantic model per message; events are named in the past tense.

Evolution is additive: new fields get defaults, readers ignore fields they do not know (``extra="ignore"``), and
``schema_version`` only changes when a reader must behave differently. The JSON form of these models is the public
contract for internal systems that produce requests or read replies directly (see README, "Kafka API").
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION = 1


def utc_now() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    """Base of every Kafka message: tolerant reader, immutable once built."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = Field(
        SCHEMA_VERSION, description="Version of this message's schema; additive changes keep it."
    )


class ChatMessage(BaseModel):
    """One turn of a conversation, as in OpenAI's chat API (text content only)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    role: Literal["system", "user", "assistant"] = Field(description="Who wrote this turn.")
    content: str = Field(description="The text of the turn.")


class SamplingParams(BaseModel):
    """How to sample the completion; the OpenAI parameters the platform accepts."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    max_tokens: int = Field(256, ge=1, description="Most tokens to generate.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling probability mass.")
    stop: list[str] = Field(default_factory=list, description="Strings that end generation when produced.")
    seed: int | None = Field(None, description="Random seed for reproducible sampling.")


class CompletionRequested(Message):
    """A client asked for a completion. Produced to ``<prefix>requests.<model>`` keyed by ``request_id``."""

    request_id: str = Field(min_length=1, max_length=200, description="Unique id; every reply carries it back.")
    model: str = Field(min_length=1, description="Registry id of the model to run; must match the topic's model.")
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation to complete.")
    sampling: SamplingParams = Field(default_factory=SamplingParams, description="Sampling parameters.")
    stream: bool = Field(True, description="Send TokensGenerated deltas before the final CompletionFinished.")
    reply_topic: str = Field(min_length=1, description="Topic the worker publishes this request's replies to.")
    tenant_id: str | None = Field(None, description="Tenant that owns the request, when known.")
    requested_at: datetime = Field(default_factory=utc_now, description="When the request was made (UTC).")
    deadline_at: datetime | None = Field(None, description="After this instant (UTC) the result is no longer wanted.")
    trace_context: dict[str, str] = Field(
        default_factory=dict,
        description="W3C trace context (traceparent, tracestate) of the request; in the body so it survives batching.",
    )


class BatchFormed(Message):
    """The batcher grouped requests for one model; produced to ``<prefix>batches.<model>``."""

    batch_id: str = Field(description="Unique id of this batch.")
    model: str = Field(description="Registry id of the model every request in the batch uses.")
    requests: list[CompletionRequested] = Field(min_length=1, description="The requests, in dispatch order.")
    formed_at: datetime = Field(default_factory=utc_now, description="When the batch was closed (UTC).")


class Usage(BaseModel):
    """Token counts of one completion, as OpenAI reports them."""

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = Field(ge=0, description="Tokens in the prompt after the chat template.")
    completion_tokens: int = Field(ge=0, description="Tokens generated.")
    total_tokens: int = Field(ge=0, description="prompt_tokens + completion_tokens.")


class TokensGenerated(Message):
    """New text for a streaming request; ``sequence`` orders the events of one request from 0."""

    event: Literal["tokens_generated"] = "tokens_generated"
    request_id: str = Field(description="The request this text belongs to.")
    sequence: int = Field(ge=0, description="Position of this event among the request's reply events.")
    text: str = Field(description="The new text since the previous event.")
    token_count: int = Field(ge=0, description="How many tokens this text holds.")


FinishReason = Literal["stop", "length", "abort"]


class CompletionFinished(Message):
    """The request completed; always the last reply event of a successful request."""

    event: Literal["completion_finished"] = "completion_finished"
    request_id: str = Field(description="The request that finished.")
    sequence: int = Field(ge=0, description="Position of this event among the request's reply events.")
    model: str = Field(description="Registry id of the model that generated the text.")
    text: str = Field(description="The whole generated text.")
    finish_reason: FinishReason = Field(description="Why generation ended, as in OpenAI's API.")
    usage: Usage = Field(description="Token counts.")
    created_at: datetime = Field(default_factory=utc_now, description="When generation finished (UTC).")


class GenerationFailed(Message):
    """The request could not be completed; always the last reply event of a failed request."""

    event: Literal["generation_failed"] = "generation_failed"
    request_id: str = Field(description="The request that failed.")
    sequence: int = Field(ge=0, description="Position of this event among the request's reply events.")
    code: str = Field(description="Machine-readable reason, e.g. invalid_request, model_unavailable, engine_error.")
    message: str = Field(description="Human-readable explanation.")
    retryable: bool = Field(False, description="Whether sending the same request again may succeed.")


ReplyEvent = TokensGenerated | CompletionFinished | GenerationFailed
"""Any event a worker publishes to a request's reply topic; ``event`` tells which."""
reply_event_adapter: TypeAdapter[ReplyEvent] = TypeAdapter(Annotated[ReplyEvent, Field(discriminator="event")])


class MessageDeadLettered(Message):
    """A record could not be processed; it is parked here with the reason instead of blocking or vanishing."""

    source_topic: str = Field(description="Topic the record was read from.")
    partition: int = Field(description="Partition the record was read from.")
    offset: int = Field(description="Offset of the record.")
    key: str | None = Field(None, description="The record's key, decoded as UTF-8 with replacement.")
    payload: str = Field(description="The record's value, decoded as UTF-8 with replacement.")
    reason: str = Field(description="Why the record was rejected.")
    service: str = Field(description="Service that rejected it.")
    dead_lettered_at: datetime = Field(default_factory=utc_now, description="When it was rejected (UTC).")
