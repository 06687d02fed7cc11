"""Chat completions logic: API request -> CompletionRequested, and reply events -> OpenAI responses or SSE chunks.
Imports no client library: events come from any async iterator."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from services.ingress.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceMessage,
    ChunkChoice,
    Delta,
    UsageOut,
    error_json,
)
from shared.contracts import (
    ChatMessage,
    CompletionFinished,
    CompletionRequested,
    GenerationFailed,
    ReplyEvent,
    SamplingParams,
    TokensGenerated,
)


class ApiError(Exception):
    """An error the client gets in OpenAI's format."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return error_json(self.message, self.type, self.param, self.code)


# How a worker's failure code reaches the client.
_FAILURE_STATUS = {
    "context_length_exceeded": (400, "invalid_request_error"),
    "invalid_request": (400, "invalid_request_error"),
    "deadline_exceeded": (504, "timeout_error"),
    "model_unavailable": (503, "service_unavailable_error"),
    "content_blocked": (400, "invalid_request_error"),  # the safety stage or output screening refused the content
}


DEADLINE_EXCEEDED = ApiError(
    504, "the request did not complete before its deadline", "timeout_error", code="deadline_exceeded"
)


def failure_error(failure: GenerationFailed) -> ApiError:
    status, type_ = _FAILURE_STATUS.get(failure.code, (503, "server_error"))
    code = "content_policy_violation" if failure.code == "content_blocked" else failure.code
    return ApiError(status, failure.message, type_, code=code)


@dataclass(frozen=True)
class Submission:
    """What the ingress adds to a client's request."""

    request_id: str
    reply_topic: str
    deadline_at: datetime
    trace_context: dict[str, str]
    default_max_tokens: int


def to_completion_requested(api: ChatCompletionRequest, sub: Submission) -> CompletionRequested:
    stop = [api.stop] if isinstance(api.stop, str) else (api.stop or [])
    sampling = SamplingParams(
        max_tokens=api.max_completion_tokens or api.max_tokens or sub.default_max_tokens,
        temperature=1.0 if api.temperature is None else api.temperature,
        top_p=1.0 if api.top_p is None else api.top_p,
        stop=stop,
        seed=api.seed,
    )
    messages = [ChatMessage(role="system" if m.role == "developer" else m.role, content=m.text()) for m in api.messages]
    return CompletionRequested(
        request_id=sub.request_id,
        model=api.model,
        messages=messages,
        sampling=sampling,
        stream=api.stream,
        reply_topic=sub.reply_topic,
        deadline_at=sub.deadline_at,
        trace_context=sub.trace_context,
    )


def _usage(finished: CompletionFinished) -> UsageOut:
    return UsageOut(**finished.usage.model_dump())


async def collect(request_id: str, model: str, events: AsyncIterator[ReplyEvent]) -> ChatCompletion:
    """Non-streaming: waits for the final event."""
    try:
        return await _final(request_id, model, events)
    except TimeoutError:
        raise DEADLINE_EXCEEDED from None


async def _final(request_id: str, model: str, events: AsyncIterator[ReplyEvent]) -> ChatCompletion:
    async for event in events:
        if isinstance(event, GenerationFailed):
            raise failure_error(event)
        if isinstance(event, CompletionFinished):
            return ChatCompletion(
                id=request_id,
                model=model,
                usage=_usage(event),
                choices=[Choice(message=ChoiceMessage(content=event.text), finish_reason=event.finish_reason)],
            )
    raise ApiError(503, "the reply stream ended without a result", "server_error", code="no_result")


def _sse(payload: object) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, separators=(',', ':'))}\n\n"


async def stream_sse(
    request_id: str, model: str, include_usage: bool, events: AsyncIterator[ReplyEvent]
) -> AsyncIterator[str]:
    """Streaming: OpenAI's chunk sequence (role, content deltas, finish reason, optional usage), then [DONE].
    Failures after the stream began arrive as an ``error`` object, as OpenAI sends them."""
    created = int(time.time())

    def chunk(delta: Delta, finish_reason: str | None = None) -> str:
        c = ChatCompletionChunk(
            id=request_id, created=created, model=model, choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)]
        )
        return _sse(c.model_dump(exclude_none=True, exclude={"usage"}) | _with_null_finish(c))

    yield chunk(Delta(role="assistant", content=""))
    try:
        async for event in events:
            if isinstance(event, TokensGenerated):
                if event.text:
                    yield chunk(Delta(content=event.text))
            elif isinstance(event, CompletionFinished):
                yield chunk(Delta(), event.finish_reason)
                if include_usage:
                    usage_chunk = ChatCompletionChunk(
                        id=request_id, created=created, model=model, choices=[], usage=_usage(event)
                    )
                    yield _sse(usage_chunk.model_dump(exclude_none=True))
                break
            elif isinstance(event, GenerationFailed):
                yield _sse(failure_error(event).body())
                break
    except ApiError as exc:
        yield _sse(exc.body())
    except TimeoutError:
        yield _sse(DEADLINE_EXCEEDED.body())
    yield _sse("[DONE]")


def _with_null_finish(c: ChatCompletionChunk) -> dict[str, object]:
    # OpenAI sends "finish_reason": null on every chunk but the last; exclude_none would drop it.
    return {"choices": [ch.model_dump(exclude_none=True) | {"finish_reason": ch.finish_reason} for ch in c.choices]}
