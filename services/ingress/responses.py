"""OpenAI's Responses API (POST /v1/responses), text in and text out: what the official clients and agent frameworks
built on it send by default. A request is served as the chat it amounts to (its instructions as the system turn, its
input items as the turns after), through the same pipeline as /v1/chat/completions; only the shapes differ: a
``response`` object, and when streaming OpenAI's typed events (response.created, ..., response.output_text.delta,
..., response.completed).

Not served, and refused by name rather than ignored: tools and the items they make, previous_response_id and stored
responses (ferry keeps no text unless a tenant opts in), background mode, ``include`` and reasoning summaries. A
reasoning model's thinking is left out of the output; its tokens count in usage."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.ingress.protocol import STRICT_INPUT, ChatCompletionRequest, ignored_fields
from services.ingress.serving import (
    DEADLINE_EXCEEDED,
    ApiError,
    IndexedEvent,
    failure_error,
    final_events,
    usage_of,
)
from shared.contracts import (
    VARIANT_NAME_PATTERN,
    BatchingProfile,
    CompletionFinished,
    GenerationFailed,
    Priority,
    ReasoningEffort,
    TokensGenerated,
)

# where a chat field's error points in a Responses request
_PARAMS = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
    "reasoning_effort": "reasoning.effort",
    "truncate_prompt_tokens": "truncation",
}


class InputText(BaseModel):
    model_config = STRICT_INPUT

    type: Literal["input_text", "output_text"] = Field(
        description="input_text in a user, system or developer turn; output_text in an assistant's."
    )
    text: str


class InputMessage(BaseModel):
    """A turn of the conversation. Items of other types (function calls and their outputs, reasoning, images,
    files) are not served."""

    model_config = STRICT_INPUT

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText] = Field(description="The turn's text, or its text parts (joined).")

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class TextFormat(BaseModel):
    model_config = STRICT_INPUT

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, description="json_schema: the format's name.")
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="json_schema: the JSON Schema.")
    description: str | None = None
    strict: bool | None = None


class TextOptions(BaseModel):
    model_config = STRICT_INPUT

    format: TextFormat | None = Field(None, description="text (the default), json_object or json_schema.")


class ReasoningOptions(BaseModel):
    model_config = STRICT_INPUT

    effort: ReasoningEffort | None = Field(None, description="Given to the chat template as reasoning_effort.")
    summary: Literal["auto", "concise", "detailed"] | None = Field(
        None, description="Not served: no summary of the thinking is written. Only null is accepted."
    )


class ResponsesRequest(BaseModel):
    model_config = STRICT_INPUT | ConfigDict(extra="allow")

    model: str = Field(min_length=1, description="A model id from GET /v1/models.", examples=["tiny-random"])
    input: str | list[InputMessage] = Field(
        min_length=1, description="The user's text, or the conversation's turns (message items)."
    )
    instructions: str | None = Field(None, description="A system turn put before the input.")
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    store: bool | None = Field(
        None, description="Accepted; nothing is stored (the response's store is false): ferry keeps no text."
    )
    metadata: dict[str, str] | None = Field(None, max_length=16, description="Returned with the response.")
    user: str | None = None
    text: TextOptions | None = None
    reasoning: ReasoningOptions | None = None
    truncation: Literal["auto", "disabled"] | None = Field(
        None,
        description="auto: a conversation longer than the model's context keeps its end (the start is dropped); "
        "disabled (the default): it is a 400.",
    )
    tool_choice: Literal["none", "auto"] | None = Field(None, description="Without tools: none or auto only.")
    parallel_tool_calls: bool | None = None
    tools: list[dict[str, Any]] | None = Field(None, description="Not served: only an empty list is accepted.")
    previous_response_id: str | None = Field(
        None, description="Not served (responses are not stored): send the whole conversation as input."
    )
    include: list[str] | None = Field(None, description="Not served: only an empty list is accepted.")
    background: bool | None = Field(None, description="Not served: only false is accepted.")
    priority: Priority | None = Field(None, description="ferry: priority class, as on /v1/chat/completions.")
    batching_profile: BatchingProfile | None = Field(None, description="ferry: batching profile.")
    variant: Annotated[str, Field(pattern=VARIANT_NAME_PATTERN)] | None = Field(
        None, description="ferry: model variant, as on /v1/chat/completions."
    )

    def unsupported(self) -> tuple[str, str] | None:
        """The first option set to something ferry cannot give, with why, or None."""
        refused = (
            ("tools", bool(self.tools), "tools are not served on /v1/responses yet: use /v1/chat/completions."),
            (
                "previous_response_id",
                self.previous_response_id is not None,
                "responses are not stored, so previous_response_id cannot be served: send the conversation as input.",
            ),
            ("include", bool(self.include), "include is not served: leave it out."),
            ("background", bool(self.background), "background mode is not served: leave it out or false."),
            (
                "reasoning.summary",
                self.reasoning is not None and self.reasoning.summary is not None,
                "reasoning summaries are not served: leave reasoning.summary out.",
            ),
        )
        return next(((param, why) for param, given, why in refused if given), None)

    def as_chat(self) -> ChatCompletionRequest:
        """The chat completion this request amounts to; raises ApiError (400) naming this request's field."""
        turns = [{"role": "user", "content": self.input}] if isinstance(self.input, str) else []
        if isinstance(self.input, list):
            turns = [{"role": item.role, "content": item.text()} for item in self.input]
        if self.instructions is not None:
            turns = [{"role": "system", "content": self.instructions}, *turns]
        chat: dict[str, Any] = {
            "model": self.model,
            "messages": turns,
            "stream": self.stream,
            "include_reasoning": False,
        }
        optional = {
            "max_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "user": self.user,
            "response_format": self._response_format(),
            "reasoning_effort": self.reasoning.effort if self.reasoning else None,
            "truncate_prompt_tokens": -1 if self.truncation == "auto" else None,
            "priority": self.priority,
            "batching_profile": self.batching_profile,
            "variant": self.variant,
        }
        chat |= {name: value for name, value in optional.items() if value is not None}
        try:
            return ChatCompletionRequest.model_validate(chat)
        except ValidationError as exc:
            error = exc.errors()[0]
            param = param_of(".".join(str(part) for part in error["loc"]) or None)
            raise ApiError(400, f"Invalid request: {error['msg']}", param=param, code="invalid_value") from None

    def _response_format(self) -> dict[str, Any] | None:
        form = self.text.format if self.text else None
        if form is None or form.type == "text":
            return None
        if form.type == "json_object":
            return {"type": "json_object"}
        spec = {"name": form.name or "response", "schema": form.schema_ or {}, "strict": form.strict}
        described = {"description": form.description} if form.description is not None else {}
        return {"type": "json_schema", "json_schema": spec | described}

    def ignored(self) -> list[str]:
        return ignored_fields(self)


def param_of(param: str | None) -> str | None:
    """A chat field an error names, as this API names it."""
    if param is None:
        return None
    head, _, rest = param.partition(".")
    if head == "response_format":  # this API's format is flat: text.format.schema, not response_format.json_schema
        rest = rest.removeprefix("json_schema").lstrip(".")
    return ".".join(filter(None, [_PARAMS.get(head, head), rest]))


def responses_error(error: ApiError) -> ApiError:
    """An error of the chat pipeline naming this API's field."""
    return ApiError(error.status, error.message, error.type, param_of(error.param), error.code, error.headers)


class ResponseShell:
    """What every response object and event of one request shares: its id, creation time and the request's
    settings, which OpenAI returns with the response."""

    def __init__(self, response_id: str, body: ResponsesRequest) -> None:
        self.id, self.body, self.created_at = response_id, body, int(time.time())
        self.message_id = f"msg_{response_id.removeprefix('resp_')}"

    def response(
        self,
        status: Literal["in_progress", "completed", "incomplete", "failed"],
        final: CompletionFinished | None = None,
        error: ApiError | None = None,
    ) -> dict[str, Any]:
        body = self.body
        form = body.text.format if body.text and body.text.format else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": {"code": error.code or error.type, "message": error.message} if error else None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "model": body.model,
            "output": [self.message(final.text, "incomplete" if status == "incomplete" else "completed")]
            if final is not None
            else [],
            "parallel_tool_calls": body.parallel_tool_calls if body.parallel_tool_calls is not None else True,
            "previous_response_id": None,
            "reasoning": {"effort": body.reasoning.effort if body.reasoning else None, "summary": None},
            "store": False,
            "temperature": 1.0 if body.temperature is None else body.temperature,
            "text": {"format": form.model_dump(by_alias=True, exclude_none=True) if form else {"type": "text"}},
            "tool_choice": body.tool_choice or "auto",
            "tools": [],
            "top_p": 1.0 if body.top_p is None else body.top_p,
            "truncation": body.truncation or "disabled",
            "usage": usage(final) if final is not None else None,
            "user": body.user,
            "metadata": body.metadata or {},
        }

    def message(self, text: str, status: Literal["in_progress", "completed", "incomplete"]) -> dict[str, Any]:
        content = [text_part(text)] if status != "in_progress" else []
        return {"id": self.message_id, "type": "message", "status": status, "role": "assistant", "content": content}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def usage(final: CompletionFinished) -> dict[str, Any]:
    counted = usage_of([final])
    details = counted.completion_tokens_details
    return {
        "input_tokens": counted.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": counted.prompt_tokens_details.cached_tokens if counted.prompt_tokens_details else 0
        },
        "output_tokens": counted.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": details.reasoning_tokens if details else 0},
        "total_tokens": counted.total_tokens,
    }


def _status(final: CompletionFinished) -> Literal["completed", "incomplete"]:
    return "incomplete" if final.finish_reason == "length" else "completed"


async def whole_response(shell: ResponseShell, events: AsyncIterator[IndexedEvent]) -> dict[str, Any]:
    """Non-streaming: the response object once the answer is complete; a failure raises ApiError."""
    try:
        (final,) = await final_events(events)
    except ApiError as exc:
        raise responses_error(exc) from None
    return shell.response(_status(final), final)


async def stream_response(shell: ResponseShell, events: AsyncIterator[IndexedEvent]) -> AsyncIterator[str]:
    """Streaming: OpenAI's event sequence for a response of one message, each event with its sequence_number; a
    failure after the stream began is an ``error`` event, then ``response.failed``."""
    sequence = 0

    def event(kind: str, **fields: Any) -> str:
        nonlocal sequence
        payload = {"type": kind, "sequence_number": sequence} | fields
        sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"

    where = {"item_id": shell.message_id, "output_index": 0, "content_index": 0}
    opened = False

    def opening() -> list[str]:
        nonlocal opened
        opened = True
        return [
            event("response.output_item.added", output_index=0, item=shell.message("", "in_progress")),
            event("response.content_part.added", **where, part=text_part("")),
        ]

    yield event("response.created", response=shell.response("in_progress"))
    yield event("response.in_progress", response=shell.response("in_progress"))
    failure: ApiError | None = None
    try:
        async for _, reply in events:
            if isinstance(reply, TokensGenerated):
                if not reply.text:
                    continue
                if not opened:
                    for line in opening():
                        yield line
                yield event("response.output_text.delta", **where, delta=reply.text, logprobs=[])
            elif isinstance(reply, CompletionFinished):
                if not opened:
                    for line in opening():
                        yield line
                status = _status(reply)
                yield event("response.output_text.done", **where, text=reply.text, logprobs=[])
                yield event("response.content_part.done", **where, part=text_part(reply.text))
                yield event("response.output_item.done", output_index=0, item=shell.message(reply.text, status))
                done = "response.completed" if status == "completed" else "response.incomplete"
                yield event(done, response=shell.response(status, reply))
                return
            elif isinstance(reply, GenerationFailed):
                failure = failure_error(reply)
                break
    except ApiError as exc:
        failure = exc
    except TimeoutError:
        failure = DEADLINE_EXCEEDED
    failure = responses_error(
        failure or ApiError(503, "the reply stream ended without a result", "server_error", code="no_result")
    )
    yield event("error", code=failure.code or failure.type, message=failure.message, param=failure.param)
    yield event("response.failed", response=shell.response("failed", error=failure))
