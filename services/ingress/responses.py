"""OpenAI's Responses API (POST /v1/responses): what the official clients and agent frameworks built on it send by
default. A request is served as the chat it amounts to (its instructions as the system turn, its input items as the
turns after: messages, function calls and their outputs), through the same pipeline as /v1/chat/completions; only the
shapes differ: a ``response`` object whose output is a message and function calls, and when streaming OpenAI's typed
events (response.created, ..., response.output_text.delta, response.function_call_arguments.delta, ...,
response.completed).

A reasoning model's thinking is a reasoning item before them (include_reasoning false leaves it out, as in vLLM's
server), and a reasoning item sent back joins the assistant turn after it. vLLM's sampling options that its server
takes on this route (top_k, seed, structured_outputs, chat_template_kwargs, ...) are passed on to the chat.

A response is stored for previous_response_id, item_reference and GET /v1/responses/{id} (and .../input_items) only
when its tenant keeps text (the handlers and adapters.ResponseStore); the stored conversation is items in OpenAI's
listed shape (stored_item), each with an id, which this module reads back as input.

Background mode (background true): the response is stored queued and answered at once, and finished apart, by the
instance that queued it or by one that takes it over (background.py); any instance reads or cancels it.

With ``conversation`` (services/ingress/conversations.py), a conversation's items come before the input, and the
input and output are added to it once the response ends.

Not served, and refused by name rather than ignored: tools other than functions, OpenAI's stored prompts, ``include``
other than the text's logprobs, reasoning summaries and encrypted reasoning."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from services.ingress.protocol import STRICT_INPUT, ChatCompletionRequest, ServiceTier, ignored_fields
from services.ingress.serving import (
    DEADLINE_EXCEEDED,
    ApiError,
    IndexedEvent,
    chat_logprobs,
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
    TokenLogprob,
    TokensGenerated,
    ToolCallPiece,
)

Status = Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]

LOGPROBS = "message.output_text.logprobs"
"""The one value of include served: the output text's logprobs."""


def unserved_include(include: list[str] | None) -> str | None:
    """The first value of an ``include`` that is not served (only the text's logprobs are), or None."""
    return next((name for name in include or [] if name != LOGPROBS), None)


VLLM_OPTIONS = (
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "min_tokens",
    "include_stop_str_in_output",
    "skip_special_tokens",
    "bad_words",
    "allowed_token_ids",
    "logit_bias",
    "structured_outputs",
    "chat_template_kwargs",
    "thinking_token_budget",
    "documents",
)
"""Options of chat completions that clients of vLLM's server send on its Responses route too (extra_body): they reach
the chat as they are, and it checks them."""

# where a chat field's error points in a Responses request
_PARAMS = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
    "reasoning_effort": "reasoning.effort",
    "truncate_prompt_tokens": "truncation",
    "logprobs": "include",
}


class InputText(BaseModel):
    model_config = STRICT_INPUT

    type: Literal["input_text", "output_text"] = Field(
        description="input_text in a user, system or developer turn; output_text in an assistant's."
    )
    text: str


def joined(content: str | list[InputText]) -> str:
    return content if isinstance(content, str) else "".join(part.text for part in content)


class InputMessage(BaseModel):
    """A turn of the conversation. Items other than messages, function calls, their outputs and reasoning (images,
    files) are not served."""

    model_config = STRICT_INPUT

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText] = Field(description="The turn's text, or its text parts (joined).")
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallItem(BaseModel):
    """A function call the model made earlier in the conversation, as a response's output gave it."""

    model_config = STRICT_INPUT

    type: Literal["function_call"]
    call_id: str = Field(min_length=1, description="The call's id; its output names it.")
    name: str
    arguments: str = Field(description="Its arguments as JSON text.")
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(BaseModel):
    """What a function call returned."""

    model_config = STRICT_INPUT

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, description="The call it answers.")
    output: str | list[InputText] = Field(description="The function's result, as text (or its text parts).")
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class ReasoningText(BaseModel):
    model_config = STRICT_INPUT

    type: Literal["reasoning_text"]
    text: str


class ReasoningItem(BaseModel):
    """A reasoning model's thinking from an earlier response: it joins the assistant turn after it (its chat
    template decides whether the model reads it)."""

    model_config = STRICT_INPUT

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[dict[str, Any]] = Field(default_factory=list, description="Ignored: ferry writes no summaries.")
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = Field(None, description="Not served: ferry encrypts no reasoning.")
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class ItemReference(BaseModel):
    """An item of one of the tenant's stored responses (its input or its output), named by its id: the item stands
    where the reference is. Clients that keep conversation state on the server (Codex, the Vercel AI SDK) send them."""

    model_config = STRICT_INPUT

    type: Literal["item_reference"]
    id: str = Field(min_length=1, description="The item's id, as its response or GET .../input_items gave it.")


def _item_type(item: Any) -> str | None:
    if isinstance(item, dict):
        return str(item.get("type", "message"))  # a message may leave its type out
    return getattr(item, "type", None)


InputItem = Annotated[
    Annotated[InputMessage, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[ItemReference, Tag("item_reference")],
    Discriminator(_item_type),
]

_ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def stored_item(item: dict[str, Any], new_id: str | None = None) -> dict[str, Any]:
    """An input item as a stored conversation keeps it and GET /v1/responses/{id}/input_items lists it, OpenAI's
    shape: with an id (its own, else ``new_id``, else a fresh one) and a status, and a message's text as parts."""
    kind = str(item.get("type", "message"))
    stored = {"id": new_id or f"{_ID_PREFIXES.get(kind, 'item')}_{uuid.uuid4().hex}"} | item | {"type": kind}
    if kind == "message":
        part = "output_text" if item.get("role") == "assistant" else "input_text"
        content = item.get("content", "")
        parts = [{"type": part, "text": content}] if isinstance(content, str) else content
        stored["content"] = [p | {"annotations": []} if p.get("type") == "output_text" else p for p in parts]
    if kind != "reasoning":
        stored.setdefault("status", "completed")
    return stored


def duplicate_id(items: Sequence[dict[str, Any]]) -> str | None:
    """The first item id that comes twice in a conversation (OpenAI refuses such input), or None."""
    seen: set[str] = set()
    for item in items:
        if (item_id := item.get("id")) is not None:
            if item_id in seen:
                return str(item_id)
            seen.add(item_id)
    return None


def input_items_page(
    response_id: str,
    conversation: Sequence[dict[str, Any]],
    output_count: int,
    after: str | None,
    limit: int,
    order: Literal["asc", "desc"],
) -> dict[str, Any]:
    """GET /v1/responses/{id}/input_items: a page of the items that led to the stored response (its input, after
    the conversation it continued), as OpenAI lists them."""
    led_to = conversation[: len(conversation) - output_count]
    tail = response_id.removeprefix("resp_")
    # responses stored before items had ids get ids that stay the same from page to page
    items = [
        stored_item(item, f"{_ID_PREFIXES.get(str(item.get('type')), 'msg')}_{tail}_{k}")
        for k, item in enumerate(led_to)
    ]
    return page_of(items, after, limit, order, f"response '{response_id}'")


def page_of(
    items: Sequence[dict[str, Any]], after: str | None, limit: int, order: Literal["asc", "desc"], holder: str
) -> dict[str, Any]:
    """A page of OpenAI's item lists: ``items`` (oldest first) in ``order``, from after the item ``after`` (the last
    id of the page before); ``holder`` names their response or conversation in an error."""
    ordered = list(items) if order == "asc" else list(reversed(items))
    if after is not None:
        ids = [item["id"] for item in ordered]
        if after not in ids:
            raise ApiError(400, f"No item with id '{after}' in {holder}.", param="after")
        ordered = ordered[ids.index(after) + 1 :]
    return list_page(ordered, limit)


def list_page(rows: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """OpenAI's cursor page of the first ``limit`` of ``rows`` (has_more when there are more)."""
    page = rows[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(rows) > limit,
    }


class FunctionToolIn(BaseModel):
    model_config = STRICT_INPUT

    type: Literal["function"] = Field(description="Only function tools are served.")
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="JSON Schema of the arguments object.")
    strict: bool | None = None


class NamedFunctionChoice(BaseModel):
    model_config = STRICT_INPUT

    type: Literal["function"]
    name: str = Field(description="One of the request's tools, which the model must call.")


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


class ConversationRef(BaseModel):
    model_config = STRICT_INPUT

    id: str = Field(min_length=1, description="The conversation's id.")


class ResponsesRequest(BaseModel):
    model_config = STRICT_INPUT | ConfigDict(extra="allow")

    model: str = Field(min_length=1, description="A model id from GET /v1/models.", examples=["tiny-random"])
    input: str | list[InputItem] = Field(
        min_length=1,
        description="The user's text, or the conversation's items: messages, function calls and their outputs.",
    )
    instructions: str | None = Field(None, description="A system turn put before the input.")
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    store: bool | None = Field(
        None,
        description="false: the response is not stored. Otherwise it is, for previous_response_id and GET "
        "/v1/responses/{id}, when the tenant keeps text (retention_days above 0); the response's store says whether.",
    )
    metadata: dict[str, str] | None = Field(None, max_length=16, description="Returned with the response.")
    user: str | None = None
    text: TextOptions | None = None
    reasoning: ReasoningOptions | None = None
    include_reasoning: bool = Field(
        True, description="vLLM: false leaves a reasoning model's thinking out of the output (its tokens still count)."
    )
    truncation: Literal["auto", "disabled"] | None = Field(
        None,
        description="auto: a conversation longer than the model's context keeps its end (the start is dropped); "
        "disabled (the default): it is a 400.",
    )
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    tools: list[FunctionToolIn] | None = Field(None, description="Functions the model may call (no other tools).")
    previous_response_id: str | None = Field(
        None,
        description="A stored response this one continues: its conversation comes before the input (its instructions "
        "do not). Only a tenant with retention stores responses, for its retention_days.",
    )
    conversation: str | ConversationRef | None = Field(
        None,
        description="A conversation (POST /v1/conversations) this response belongs to: its items come before the "
        "input, and the input and output are added to it. Not with previous_response_id; needs retention.",
    )
    include: list[str] | None = Field(
        None,
        description="message.output_text.logprobs: the output text's logprobs (with top_logprobs alternatives each). "
        "Nothing else is served.",
    )
    top_logprobs: int | None = Field(None, ge=0, le=20, description="With include's logprobs: alternatives per token.")
    max_tool_calls: int | None = Field(
        None, ge=0, description="0: no call; 1: at most one (parallel_tool_calls false). More is not served."
    )
    background: bool | None = Field(
        None,
        description="true: answered at once with the response queued, which is then finished on its own (GET "
        "/v1/responses/{id} reads it, POST .../cancel stops it). Needs a stored response: a tenant with retention, and "
        "store not false. Streamed too, and GET /v1/responses/{id}?stream=true&starting_after=N takes the stream up "
        "again.",
    )
    priority: Priority | None = Field(None, description="ferry: priority class, as on /v1/chat/completions.")
    service_tier: ServiceTier | None = Field(None, description="OpenAI's processing tier, as on /v1/chat/completions.")
    batching_profile: BatchingProfile | None = Field(None, description="ferry: batching profile.")
    variant: Annotated[str, Field(pattern=VARIANT_NAME_PATTERN)] | None = Field(
        None, description="ferry: model variant, as on /v1/chat/completions."
    )

    def unsupported(self) -> tuple[str, str] | None:
        """The first option set to something ferry cannot give, with why, or None."""
        refused = (
            (
                "include",
                unserved_include(self.include) is not None,
                f"include takes only {LOGPROBS}: encrypted reasoning, sources and the rest are not served.",
            ),
            (
                "max_tool_calls",
                (self.max_tool_calls or 0) > 1,
                "max_tool_calls above 1 is not served: 0 (no call) or 1 (one at most).",
            ),
            *(
                (name, name in (self.model_extra or {}), f"{name} is not served: send the conversation as input.")
                for name in ("prompt",)
            ),
            (
                "reasoning.summary",
                self.reasoning is not None and self.reasoning.summary is not None,
                "reasoning summaries are not served: leave reasoning.summary out.",
            ),
            (
                "input",
                isinstance(self.input, list)
                and any(isinstance(item, ReasoningItem) and item.encrypted_content for item in self.input),
                "encrypted reasoning is not served (ferry never writes it): send reasoning items with their content.",
            ),
        )
        return next(((param, why) for param, given, why in refused if given), None)

    def references(self) -> list[str]:
        """The ids of the stored items the input names (item_reference), in order."""
        if isinstance(self.input, str):
            return []
        return [item.id for item in self.input if isinstance(item, ItemReference)]

    def input_items(self, referenced: Mapping[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """The input as items, as a stored conversation keeps them (``stored_item``): each reference replaced by the
        stored item it names, from ``referenced`` (which holds every one)."""
        if isinstance(self.input, str):
            return [stored_item({"type": "message", "role": "user", "content": self.input})]
        return [
            (referenced or {})[item.id]
            if isinstance(item, ItemReference)
            else stored_item(item.model_dump(by_alias=True, exclude_none=True))
            for item in self.input
        ]

    def with_input(self, items: list[dict[str, Any]]) -> ResponsesRequest:
        """This request with ``items`` as its whole input: a stored conversation it continues, then its own input
        with references resolved."""
        fields = self.model_dump(by_alias=True, exclude_none=True, exclude={"previous_response_id", "conversation"})
        return ResponsesRequest.model_validate(fields | {"input": items})

    def conversation_id(self) -> str | None:
        return self.conversation.id if isinstance(self.conversation, ConversationRef) else self.conversation

    def as_chat(self) -> ChatCompletionRequest:
        """The chat completion this request amounts to; raises ApiError (400) naming this request's field."""
        turns = [{"role": "user", "content": self.input}] if isinstance(self.input, str) else self._turns()
        if self.instructions is not None:
            turns = [{"role": "system", "content": self.instructions}, *turns]
        chat: dict[str, Any] = {
            "model": self.model,
            "messages": turns,
            "stream": self.stream,
            "include_reasoning": self.include_reasoning,
        }
        chat |= {name: value for name, value in (self.model_extra or {}).items() if name in VLLM_OPTIONS}
        optional = {
            "max_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "user": self.user,
            "response_format": self._response_format(),
            "reasoning_effort": self.reasoning.effort if self.reasoning else None,
            "truncate_prompt_tokens": -1 if self.truncation == "auto" else None,
            "logprobs": True if LOGPROBS in (self.include or []) else None,
            "top_logprobs": self.top_logprobs if LOGPROBS in (self.include or []) else None,
            "tools": [
                {"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
                for tool in self.tools
            ]
            if self.tools
            else None,
            "tool_choice": "none"
            if self.max_tool_calls == 0
            else {"type": "function", "function": {"name": self.tool_choice.name}}
            if isinstance(self.tool_choice, NamedFunctionChoice)
            else self.tool_choice,
            "parallel_tool_calls": False if self.max_tool_calls == 1 else self.parallel_tool_calls,
            "priority": self.priority,
            "service_tier": self.service_tier,
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

    def _turns(self) -> list[dict[str, Any]]:
        """The chat's turns from the input's items: a function call joins the assistant turn before it (the model
        wrote them together), a call's output is a tool turn, and a reasoning item's thinking is the reasoning of the
        assistant turn after it."""
        turns: list[dict[str, Any]] = []
        thought: str | None = None  # a reasoning item's, until the assistant turn after it
        for item in self.input:
            assert not isinstance(item, (str, ItemReference)), "references are resolved first (with_input)"
            if isinstance(item, ReasoningItem):
                thought = (thought or "") + "".join(part.text for part in item.content or [])
                continue
            answers = isinstance(item, FunctionCallItem) or (
                isinstance(item, InputMessage) and item.role == "assistant"
            )
            if thought is not None and not answers:  # thinking that came to no answer: a turn of its own
                turns.append({"role": "assistant", "content": "", "reasoning": thought})
                thought = None
            if isinstance(item, InputMessage):
                turns.append({"role": item.role, "content": joined(item.content)})
            elif isinstance(item, FunctionCallItem):
                call = {
                    "id": item.call_id,
                    "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments},
                }
                if turns and turns[-1]["role"] == "assistant" and thought is None:
                    turns[-1].setdefault("tool_calls", []).append(call)
                else:
                    turns.append({"role": "assistant", "content": None, "tool_calls": [call]})
            else:
                turns.append({"role": "tool", "tool_call_id": item.call_id, "content": joined(item.output)})
            if thought is not None and turns[-1]["role"] == "assistant":
                turns[-1]["reasoning"], thought = thought, None
        if thought is not None:  # thinking with nothing after it (an answer cut short)
            turns.append({"role": "assistant", "content": "", "reasoning": thought})
        return turns

    def ignored(self) -> list[str]:
        """Fields nobody reads: those the API does not know, less vLLM's options passed on to the chat."""
        return [name for name in ignored_fields(self) if name not in VLLM_OPTIONS]

    def _response_format(self) -> dict[str, Any] | None:
        form = self.text.format if self.text else None
        if form is None or form.type == "text":
            return None
        if form.type == "json_object":
            return {"type": "json_object"}
        spec = {"name": form.name or "response", "schema": form.schema_ or {}, "strict": form.strict}
        described = {"description": form.description} if form.description is not None else {}
        return {"type": "json_schema", "json_schema": spec | described}


def param_of(param: str | None) -> str | None:
    """A chat field an error names, as this API names it."""
    if param is None:
        return None
    head, _, rest = param.partition(".")
    if head == "response_format":  # this API's format is flat: text.format.schema, not response_format.json_schema
        rest = rest.removeprefix("json_schema").lstrip(".")
    elif head == "messages":  # a turn's position is not its item's (instructions come first, calls join turns)
        rest = ""
    elif head == "tools":  # this API's tools are flat too: tools.0.parameters
        rest = re.sub(r"^(\d+)\.function", r"\1", rest)
    return ".".join(filter(None, [_PARAMS.get(head, head), rest]))


def responses_error(error: ApiError) -> ApiError:
    """An error of the chat pipeline naming this API's field."""
    return error.naming(param_of(error.param))


class OutputTextOut(BaseModel):
    type: Literal["output_text"]
    text: str
    annotations: list[Any] = Field(description="Always empty.")
    logprobs: list[dict[str, Any]] = Field(description="With include's logprobs: the chat API's entries, per token.")


class MessageOut(BaseModel):
    id: str
    type: Literal["message"]
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"]
    content: list[OutputTextOut]


class FunctionCallItemOut(BaseModel):
    id: str
    type: Literal["function_call"]
    status: Literal["in_progress", "completed"]
    call_id: str = Field(description="What the function's output (a function_call_output item) names.")
    name: str
    arguments: str = Field(description="JSON text, as the model wrote it.")


class ReasoningTextOut(BaseModel):
    type: Literal["reasoning_text"]
    text: str


class ReasoningOut(BaseModel):
    id: str
    type: Literal["reasoning"]
    summary: list[Any] = Field(description="Always empty: ferry writes no summaries.")
    content: list[ReasoningTextOut]
    status: Literal["in_progress", "completed"]


class ResponseUsageOut(BaseModel):
    input_tokens: int
    input_tokens_details: dict[str, int] = Field(description="cached_tokens: prompt tokens from the prefix cache.")
    output_tokens: int
    output_tokens_details: dict[str, int] = Field(description="reasoning_tokens: tokens of thinking.")
    total_tokens: int


class ResponseObject(BaseModel):
    """The response, as OpenAI's Responses API gives it (the fields ferry fills; the request's settings echoed)."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Status
    background: bool = Field(description="Whether it was made in background mode.")
    completed_at: int | None
    error: dict[str, Any] | None
    incomplete_details: dict[str, Any] | None
    instructions: str | None
    max_output_tokens: int | None
    max_tool_calls: int | None
    top_logprobs: int
    model: str
    output: list[Annotated[MessageOut | FunctionCallItemOut | ReasoningOut, Field(discriminator="type")]]
    parallel_tool_calls: bool
    previous_response_id: str | None
    conversation: dict[str, str] | None = Field(description="The conversation it belongs to, as {id}.")
    reasoning: dict[str, Any]
    store: bool = Field(description="Whether the response is stored (for previous_response_id and GET).")
    temperature: float
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    top_p: float
    truncation: Literal["auto", "disabled"]
    usage: ResponseUsageOut | None
    user: str | None
    metadata: dict[str, str]


INGRESS_STOPPED = ApiError(
    503,
    "The ingress instance finishing this background response stopped before it ended, and no other finished it by "
    "its deadline; send it again.",
    "service_unavailable_error",
    code="ingress_stopped",
)
"""How a background response reads when nobody finished it by its deadline."""

UNFINISHED = ("queued", "in_progress")
"""A background response's states before it ends."""


def as_of(response: dict[str, Any], finish_by: datetime | None, now: datetime) -> dict[str, Any]:
    """A stored response as it stands at ``now``: a background response still queued past ``finish_by`` failed,
    since whoever was finishing it stopped (it would have stored its end by then)."""
    if response.get("status") not in UNFINISHED or finish_by is None or now <= finish_by:
        return response
    error = {"code": INGRESS_STOPPED.code, "message": INGRESS_STOPPED.message}
    return response | {"status": "failed", "error": error}


class ResponseItemList(BaseModel):
    """A page of a stored response's input items (GET /v1/responses/{id}/input_items)."""

    object: Literal["list"]
    data: list[dict[str, Any]] = Field(description="Items as OpenAI lists them: messages, calls, outputs, reasoning.")
    first_id: str | None
    last_id: str | None
    has_more: bool = Field(description="Whether items follow this page (ask again with after=last_id).")


Keep = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""Stores a finished response; returns it as the client gets it (store false when it could not be stored)."""


@dataclass(frozen=True)
class ResponsesCall:
    """A Responses API request on its way through the chat pipeline."""

    body: ResponsesRequest
    """As the client sent it."""
    keep: Keep | None = None
    """Set when the response is to be stored."""
    reply_offset: int | None = None
    """Background mode: the reply topic's offset before the request left."""

    def shell(self, response_id: str) -> ResponseShell:
        return ResponseShell(response_id, self.body, stored=self.keep is not None)


class Shell:
    """What every response object and event of one response shares: its id, the ids of its output items (derived
    from it) and the fields that echo its request (``echoed``)."""

    def __init__(self, response_id: str) -> None:
        self.id = response_id
        self.message_id = f"msg_{response_id.removeprefix('resp_')}"
        self.reasoning_id = f"rs_{response_id.removeprefix('resp_')}"

    def output_of(self, final: CompletionFinished) -> list[dict[str, Any]]:
        """The final's output items: its message (left out when it is only calls, as OpenAI does), then its calls."""
        thought = [self.reasoning(final.reasoning, "completed")] if final.reasoning else []
        calls = [function_call(call.id, call.function.name, call.function.arguments) for call in final.tool_calls or []]
        if final.text or not calls:
            return [*thought, self.message(final.text, _status(final), final.logprobs), *calls]
        return [*thought, *calls]

    def reasoning(self, text: str, status: Literal["in_progress", "completed"]) -> dict[str, Any]:
        content = [{"type": "reasoning_text", "text": text}] if status != "in_progress" else []
        return {"id": self.reasoning_id, "type": "reasoning", "summary": [], "content": content, "status": status}

    def message(
        self,
        text: str,
        status: Literal["in_progress", "completed", "incomplete"],
        logprobs: Sequence[TokenLogprob] | None = None,
    ) -> dict[str, Any]:
        content = [text_part(text, logprobs)] if status != "in_progress" else []
        return {"id": self.message_id, "type": "message", "status": status, "role": "assistant", "content": content}

    def echoed(self) -> dict[str, Any]:
        """The response object's fields other than how it went: its id, creation time and the request's settings."""
        raise NotImplementedError

    def response(
        self,
        status: Status,
        final: CompletionFinished | None = None,
        error: ApiError | None = None,
        output: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The response object; ``output``: its items in the order a stream gave them (else the final's order)."""
        return self.echoed() | self.state(status, final, error, output)

    def state(
        self,
        status: Status,
        final: CompletionFinished | None = None,
        error: ApiError | None = None,
        output: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The fields of the response object that say how it went (the rest echoes the request)."""
        if output is None:
            output = self.output_of(final) if final is not None else []
        return {
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": {"code": error.code or error.type, "message": error.message} if error else None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "output": output,
            "usage": usage(final) if final is not None else None,
        }


class TakenOverShell(Shell):
    """A background response's shell rebuilt from its stored queued object, for the instance that takes it over
    (which has the stored response, not the request): the same id, creation time and settings, so its events and its
    end are those the instance that queued it would have made."""

    def __init__(self, queued: dict[str, Any]) -> None:
        super().__init__(str(queued["id"]))
        self.queued = queued

    def echoed(self) -> dict[str, Any]:
        return self.queued  # its state's fields are replaced


class ResponseShell(Shell):
    """The shell of a response made from its request: its settings are what OpenAI returns with the response."""

    def __init__(self, response_id: str, body: ResponsesRequest, stored: bool = False) -> None:
        super().__init__(response_id)
        self.body, self.created_at, self.stored = body, int(time.time()), stored

    def echoed(self) -> dict[str, Any]:
        body = self.body
        form = body.text.format if body.text and body.text.format else None
        tool_choice = body.tool_choice.model_dump() if isinstance(body.tool_choice, BaseModel) else body.tool_choice
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "background": bool(body.background),
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "max_tool_calls": body.max_tool_calls,
            "top_logprobs": body.top_logprobs or 0,
            "model": body.model,
            "parallel_tool_calls": body.parallel_tool_calls if body.parallel_tool_calls is not None else True,
            "previous_response_id": body.previous_response_id,
            "conversation": {"id": conversation} if (conversation := body.conversation_id()) else None,
            "reasoning": {"effort": body.reasoning.effort if body.reasoning else None, "summary": None},
            "store": self.stored,
            "temperature": 1.0 if body.temperature is None else body.temperature,
            "text": {"format": form.model_dump(by_alias=True, exclude_none=True) if form else {"type": "text"}},
            "tool_choice": tool_choice or "auto",
            "tools": [tool.model_dump(exclude_none=True) for tool in body.tools or []],
            "top_p": 1.0 if body.top_p is None else body.top_p,
            "truncation": body.truncation or "disabled",
            "user": body.user,
            "metadata": body.metadata or {},
        }


def function_call(
    call_id: str, name: str, arguments: str, status: Literal["in_progress", "completed"] = "completed"
) -> dict[str, Any]:
    """A function call output item; its ``call_id`` is what the function's output names, its ``id`` the item's."""
    return {
        "id": f"fc_{call_id}",
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def _reasoning_text(text: str) -> dict[str, Any]:
    return {"type": "reasoning_text", "text": text}


def text_part(text: str, logprobs: Sequence[TokenLogprob] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs_out(logprobs)}


def logprobs_out(entries: Sequence[TokenLogprob] | None) -> list[dict[str, Any]]:
    """Logprobs as this API gives them (those of the chat API, entry by entry); [] when none were asked for."""
    found = chat_logprobs(entries)
    return [entry.model_dump() for entry in found.content or []] if found is not None else []


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


async def whole_response(shell: Shell, events: AsyncIterator[IndexedEvent], keep: Keep | None = None) -> dict[str, Any]:
    """Non-streaming: the response object once the answer is complete (stored first, with ``keep``); a failure
    raises ApiError."""
    try:
        (final,) = await final_events(events)
    except ApiError as exc:
        raise responses_error(exc) from None
    response = shell.response(_status(final), final)
    return await keep(response) if keep is not None else response


class _StreamedOutput:
    """The output items a stream has opened, in order: the message (once text comes) and each function call (once
    its first piece comes), with the arguments sent so far; and the events that open, extend and close them."""

    def __init__(self, shell: Shell, event: Callable[..., str]) -> None:
        self.shell, self.event = shell, event
        self.items: list[dict[str, Any]] = []  # in output order
        self.message_at: int | None = None
        self.reasoning_at: int | None = None
        self.calls: dict[int, int] = {}  # a call's index among the answer's calls -> its output index
        self.arguments: dict[int, str] = {}

    def thought(self, delta: str) -> list[str]:
        events = []
        if self.reasoning_at is None:
            self.reasoning_at = len(self.items)
            self.items.append(self.shell.reasoning("", "in_progress"))
            events = [
                self.event("response.output_item.added", output_index=self.reasoning_at, item=self.items[-1]),
                self.event("response.content_part.added", **self._thought_place(), part=_reasoning_text("")),
            ]
        return [*events, self.event("response.reasoning_text.delta", **self._thought_place(), delta=delta)]

    def text(self, delta: str, logprobs: Sequence[TokenLogprob] | None = None) -> list[str]:
        events = self._open_message() if self.message_at is None else []
        where = self._text_place()
        return [
            *events,
            self.event("response.output_text.delta", **where, delta=delta, logprobs=logprobs_out(logprobs)),
        ]

    def pieces(self, pieces: list[ToolCallPiece]) -> list[str]:
        events = []
        for piece in pieces:
            if piece.index not in self.calls:
                events += self._open_call(piece.index, piece.id, piece.name)
            events += self._arguments(piece.index, piece.arguments)
        return events

    def close(self, final: CompletionFinished) -> list[str]:
        """The events that end every item, the calls the pieces did not bring whole completed from the final."""
        status = _status(final)
        events = []
        if self.reasoning_at is None and final.reasoning:  # thinking the stream did not bring (deltas lost)
            events += self.thought(final.reasoning)
        if self.reasoning_at is not None:
            where, thought = self._thought_place(), self.shell.reasoning(final.reasoning or "", "completed")
            events += [
                self.event("response.reasoning_text.done", **where, text=final.reasoning or ""),
                self.event("response.content_part.done", **where, part=_reasoning_text(final.reasoning or "")),
                self.event("response.output_item.done", output_index=self.reasoning_at, item=thought),
            ]
            self.items[self.reasoning_at] = thought
        for index, call in enumerate(final.tool_calls or []):
            if index not in self.calls:
                events += self._open_call(index, call.id, call.function.name)
            sent = self.arguments[index]
            if call.function.arguments.startswith(sent):
                events += self._arguments(index, call.function.arguments[len(sent) :])
        if self.message_at is None and (final.text or not final.tool_calls):
            events += self._open_message()
            if final.text:
                events += self.text(final.text, final.logprobs)
        if self.message_at is not None:
            where = self._text_place()
            message = self.shell.message(final.text, status, final.logprobs)
            events += [
                self.event(
                    "response.output_text.done", **where, text=final.text, logprobs=logprobs_out(final.logprobs)
                ),
                self.event("response.content_part.done", **where, part=message["content"][0]),
                self.event("response.output_item.done", output_index=self.message_at, item=message),
            ]
            self.items[self.message_at] = message
        for index, call in enumerate(final.tool_calls or []):
            at, item = self.calls[index], function_call(call.id, call.function.name, call.function.arguments)
            where = {"item_id": item["id"], "output_index": at}
            events += [
                self.event(
                    "response.function_call_arguments.done", **where, name=item["name"], arguments=item["arguments"]
                ),
                self.event("response.output_item.done", output_index=at, item=item),
            ]
            self.items[at] = item
        return events

    def _thought_place(self) -> dict[str, Any]:
        return {"item_id": self.shell.reasoning_id, "output_index": self.reasoning_at, "content_index": 0}

    def _text_place(self) -> dict[str, Any]:
        return {"item_id": self.shell.message_id, "output_index": self.message_at, "content_index": 0}

    def _open_message(self) -> list[str]:
        self.message_at = len(self.items)
        self.items.append(self.shell.message("", "in_progress"))
        return [
            self.event("response.output_item.added", output_index=self.message_at, item=self.items[-1]),
            self.event("response.content_part.added", **self._text_place(), part=text_part("")),
        ]

    def _open_call(self, index: int, call_id: str, name: str) -> list[str]:
        self.calls[index], self.arguments[index] = len(self.items), ""
        self.items.append(function_call(call_id, name, "", "in_progress"))
        return [self.event("response.output_item.added", output_index=self.calls[index], item=self.items[-1])]

    def _arguments(self, index: int, delta: str) -> list[str]:
        if not delta:
            return []
        self.arguments[index] += delta
        item = self.items[self.calls[index]]
        where = {"item_id": item["id"], "output_index": self.calls[index]}
        return [self.event("response.function_call_arguments.delta", **where, delta=delta)]


ENDING_EVENTS = ("response.completed", "response.incomplete", "response.failed")
"""The events a response's stream ends with; each carries the response as it ended."""


def sse_event(kind: str, sequence: int, **fields: Any) -> str:
    """One event of a response's stream, as server-sent events frame it."""
    payload = {"type": kind, "sequence_number": sequence} | fields
    return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"


def ends_stream(text: str) -> bool:
    """Whether an event ``sse_event`` wrote is one a response's stream ends with, without reading its data."""
    return text.startswith(tuple(f"event: {kind}\n" for kind in ENDING_EVENTS))


def read_event(text: str) -> tuple[str, int, dict[str, Any]]:
    """The kind, sequence number and fields of an event ``sse_event`` wrote."""
    payload = json.loads(text.split("\ndata: ", 1)[1])
    return str(payload["type"]), int(payload["sequence_number"]), payload


async def stream_response(
    shell: Shell, events: AsyncIterator[IndexedEvent], keep: Keep | None = None
) -> AsyncIterator[str]:
    """Streaming: OpenAI's event sequence for a response (a message, function calls), each event with its
    sequence_number; a failure after the stream began is an ``error`` event, then ``response.failed``. With
    ``keep``, the response is stored before its last event, so a client that continues it at once finds it."""
    sequence = 0

    def event(kind: str, **fields: Any) -> str:
        nonlocal sequence
        sequence += 1
        return sse_event(kind, sequence - 1, **fields)

    output = _StreamedOutput(shell, event)
    yield event("response.created", response=shell.response("in_progress"))
    yield event("response.in_progress", response=shell.response("in_progress"))
    failure: ApiError | None = None
    try:
        async for _, reply in events:
            if isinstance(reply, TokensGenerated):
                lines = output.thought(reply.reasoning) if reply.reasoning else []
                lines += output.pieces(reply.tool_calls) + (
                    output.text(reply.text, reply.logprobs) if reply.text else []
                )
                for line in lines:
                    yield line
            elif isinstance(reply, CompletionFinished):
                for line in output.close(reply):
                    yield line
                status = _status(reply)
                done = "response.completed" if status == "completed" else "response.incomplete"
                response = shell.response(status, reply, output=output.items)
                yield event(done, response=await keep(response) if keep is not None else response)
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
