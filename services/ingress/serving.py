"""Completions logic: API request -> CompletionRequested, and reply events -> OpenAI responses or SSE chunks, for chat
and plain (legacy) completions. Imports no client library: events come from any async iterator."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Literal

from services.ingress.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessageIn,
    ChatTemplateKwargs,
    Choice,
    ChoiceLogprobs,
    ChoiceMessage,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionTokensDetails,
    Delta,
    DeltaFunction,
    DeltaToolCall,
    FunctionCallOut,
    NamedToolChoice,
    PromptTokensDetails,
    ResponseFormatIn,
    TokenLogprobOut,
    ToolCallOut,
    TopLogprobOut,
    UsageOut,
    error_json,
)
from shared.contracts import (
    BatchingProfile,
    ChatMessage,
    CompletionFinished,
    CompletionRequested,
    FunctionCall,
    FunctionTool,
    GenerationFailed,
    Priority,
    PromptCleared,
    PromptLogprobs,
    PromptScreening,
    ReplyEvent,
    ResponseFormat,
    SamplingParams,
    StructuredOutputs,
    TokenLogprob,
    TokensGenerated,
    ToolCall,
    ToolCallPiece,
    TopLogprob,
)

logger = logging.getLogger(__name__)

ApiKind = Literal["chat", "text"]
IndexedEvent = tuple[int, ReplyEvent]  # a reply event and the index of the choice it belongs to


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

    def with_headers(self, headers: dict[str, str]) -> ApiError:
        """The same error with ``headers`` added to its own (which win)."""
        return ApiError(self.status, self.message, self.type, self.param, self.code, headers | self.headers)

    def naming(self, param: str | None) -> ApiError:
        """The same error naming ``param`` as the field at fault."""
        return ApiError(self.status, self.message, self.type, param, self.code, self.headers)


# How a worker's failure code reaches the client.
_FAILURE_STATUS = {
    "context_length_exceeded": (400, "invalid_request_error"),
    "invalid_request": (400, "invalid_request_error"),
    "deadline_exceeded": (504, "timeout_error"),
    "cancelled": (499, "invalid_request_error"),
    "model_unavailable": (503, "service_unavailable_error"),
    "variant_unavailable": (400, "invalid_request_error"),
    "content_blocked": (400, "invalid_request_error"),  # the safety stage or output screening refused the content
    "screening_unavailable": (503, "service_unavailable_error"),  # a tenant's safety policy could not be read
}


DEADLINE_EXCEEDED = ApiError(
    504, "the request did not complete before its deadline", "timeout_error", code="deadline_exceeded"
)


def failure_error(failure: GenerationFailed) -> ApiError:
    status, type_ = _FAILURE_STATUS.get(failure.code, (503, "server_error"))
    code = "content_policy_violation" if failure.code == "content_blocked" else failure.code
    retry = {"Retry-After": "1"} if failure.retryable and status == 503 else None
    return ApiError(
        status,
        failure.message,
        type_,
        # workers that predate GenerationFailed.param name no param; variant_unavailable is always about the variant
        param=failure.param or ("variant" if code == "variant_unavailable" else None),
        code=code,
        headers=retry,
    )


@dataclass(frozen=True)
class Submission:
    """What the ingress adds to a client's request: ids, deadline, trace, and the tenant's settings."""

    request_id: str
    reply_topic: str
    deadline_at: datetime
    trace_context: dict[str, str]
    default_max_tokens: int
    tenant_id: str | None = None
    priority: Priority = "interactive"
    profile: BatchingProfile | None = None
    retain_text: bool = False
    variant: str | None = None  # the request's, else its tenant's default; None leaves it to the model's default
    prompt_screening: PromptScreening = "before"
    screening_policy: str | None = None  # digest of the tenant's screening policy (see Tenant.screening_policy)
    max_model_len: int | None = None  # the model's context: no more can be generated, so max_tokens is cut to it


def to_completion_requested(api: ChatCompletionRequest | CompletionRequest, sub: Submission) -> CompletionRequested:
    stop = [api.stop] if isinstance(api.stop, str) else (api.stop or [])
    max_tokens = api.max_completion_tokens if isinstance(api, ChatCompletionRequest) else None
    if isinstance(api, CompletionRequest) and api.prompt_only():
        max_tokens = 1  # as vLLM's server does it: the engine generates at least one token, the response drops it
    # the default leaves room for min_tokens; a limit the client set was checked against it
    max_tokens = max_tokens or api.max_tokens or max(sub.default_max_tokens, api.min_tokens or 0)
    if sub.max_model_len is not None:
        # what is charged, batched and forecast by it stays within what the model can write (the worker cuts it
        # further, to what the context leaves after the prompt)
        max_tokens = min(max_tokens, max(sub.max_model_len, api.min_tokens or 0))
    sampling = SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if api.temperature is None else api.temperature,
        top_p=1.0 if api.top_p is None else api.top_p,
        stop=stop,
        seed=api.seed,
        presence_penalty=api.presence_penalty or 0.0,
        frequency_penalty=api.frequency_penalty or 0.0,
        response_format=_response_format(api.response_format),
        logprobs=_logprobs(api),
        prompt_logprobs=api.logprobs if isinstance(api, CompletionRequest) and api.echo else None,
        logit_bias={int(token): bias for token, bias in (api.logit_bias or {}).items()},
        top_k=max(api.top_k or 0, 0),  # vLLM's -1 is off, as 0 is
        min_p=api.min_p or 0.0,
        repetition_penalty=api.repetition_penalty or 1.0,
        min_tokens=api.min_tokens or 0,
        ignore_eos=bool(api.ignore_eos),
        stop_token_ids=api.stop_token_ids or [],
        include_stop_str_in_output=bool(api.include_stop_str_in_output),
        skip_special_tokens=api.skip_special_tokens is not False,
        spaces_between_special_tokens=api.spaces_between_special_tokens is not False,
        bad_words=api.bad_words or [],
        allowed_token_ids=api.allowed_token_ids,
        structured_outputs=(
            StructuredOutputs.model_validate(api.structured_outputs.model_dump(exclude_none=True))
            if api.structured_outputs
            else None
        ),
    )
    chat: dict[str, object]
    if isinstance(api, ChatCompletionRequest):
        chat = {"messages": [_chat_message(m) for m in api.messages], "documents": api.documents or None}
        chat |= _tools(api) | _thinking(api)
    else:
        chat = _prompt_fields(api.prompts()[0])  # choice_requests gives each choice its own
    return CompletionRequested(
        request_id=sub.request_id,
        model=api.model,
        sampling=sampling,
        stream=api.stream,
        reply_topic=sub.reply_topic,
        deadline_at=sub.deadline_at,
        trace_context=sub.trace_context,
        tenant_id=sub.tenant_id,
        priority=sub.priority,
        profile=sub.profile,
        retain_text=sub.retain_text,
        variant=sub.variant,
        variant_fallback=api.variant_fallback,
        cache_salt=sub.tenant_id,
        prompt_screening=sub.prompt_screening,
        screening_policy=sub.screening_policy,
        return_token_ids=bool(api.return_token_ids),
        truncate_prompt_tokens=api.truncate_prompt_tokens,
        truncation_side=api.truncation_side or "left",
        **chat,
    )


def _chat_message(m: ChatMessageIn) -> ChatMessage:
    return ChatMessage(
        role="system" if m.role == "developer" else m.role,
        content=m.text(),
        tool_calls=[
            ToolCall(id=c.id, function=FunctionCall(name=c.function.name, arguments=c.function.arguments))
            for c in m.tool_calls or []
        ],
        tool_call_id=m.tool_call_id,
        reasoning=m.reasoning if m.reasoning is not None else m.reasoning_content,
    )


def _thinking(api: ChatCompletionRequest) -> dict[str, object]:
    """A reasoning model's switches, as vLLM's server reads them: the template's own switch wins, else
    reasoning_effort none turns thinking off and any other value on."""
    switches = api.chat_template_kwargs or ChatTemplateKwargs()
    enable = switches.enable_thinking if switches.enable_thinking is not None else switches.thinking
    if enable is None and api.reasoning_effort is not None:
        enable = api.reasoning_effort != "none"
    return {
        "enable_thinking": enable,
        "reasoning_effort": api.reasoning_effort,
        "thinking_token_budget": api.thinking_token_budget,
        "add_generation_prompt": api.add_generation_prompt is not False,
        "continue_final_message": api.continue_final_message,
    }


def _tools(api: ChatCompletionRequest) -> dict[str, object]:
    """The request's tools and how the model may use them, in the contract's fields (none without tools)."""
    if not api.tools:
        return {}
    choice = api.tool_choice
    named = choice.function.name if isinstance(choice, NamedToolChoice) else None
    return {
        "tools": [
            FunctionTool(name=t.function.name, description=t.function.description, parameters=t.function.parameters)
            for t in api.tools
        ],
        "tool_choice": "required" if named else choice or "auto",
        "tool_choice_function": named,
        "parallel_tool_calls": api.parallel_tool_calls is not False,
    }


def _prompt_fields(prompt: str | list[int]) -> dict[str, object]:
    """A raw prompt's fields in the contract: its text, or its token ids."""
    if isinstance(prompt, str):
        return {"prompt": prompt, "prompt_token_ids": None}
    return {"prompt": None, "prompt_token_ids": prompt}


def choice_requests(
    message: CompletionRequested, n: int, prompts: Sequence[str | list[int]] | None = None
) -> list[CompletionRequested]:
    """The requests that generate the choices of one API request: ``n`` for each of ``prompts`` (a raw prompt list of
    /v1/completions; None: the message's own prompt or chat), in OpenAI's order, choice i * n + j being prompt i's
    j-th. Choices are sampled independently, so each is a request of its own through Kafka (vLLM's engine also splits
    ``n`` into one request per choice): choice k has the id ``<request id>-<k>``. The choices of one prompt name
    their group in ``choice_of`` (the review queue keeps one item for their prompt): the request's id, or with several
    prompts ``<request id>-p<i>``. When the request is seeded, prompt i's j-th choice has the seed + j, as vLLM derives
    it, so that seeded choices differ from one another and each is reproducible (wrapped around within 64 bits)."""
    texts = list(prompts) if prompts is not None and len(prompts) > 1 else [None]  # one: the message has it already
    if n == 1 and texts == [None]:
        return [message]
    seed = message.sampling.seed
    return [
        message.model_copy(
            update={
                "request_id": f"{message.request_id}-{i * n + j}",
                "choice_of": None if n == 1 else message.request_id if text is None else f"{message.request_id}-p{i}",
                "sampling": message.sampling.model_copy(update={"seed": None if seed is None else _int64(seed + j)}),
            }
            | (_prompt_fields(text) if text is not None else {})
        )
        for i, text in enumerate(texts)
        for j in range(n)
    ]


def _int64(value: int) -> int:
    return (value + 2**63) % 2**64 - 2**63


def _logprobs(api: ChatCompletionRequest | CompletionRequest) -> int | None:
    """How many alternatives per position the request asks for with its logprobs; None: no logprobs."""
    if isinstance(api, CompletionRequest):
        return api.logprobs
    return (api.top_logprobs or 0) if api.logprobs else None


def _response_format(api: ResponseFormatIn | None) -> ResponseFormat | None:
    if api is None or api.type == "text":
        return None
    if api.type == "json_object":
        return ResponseFormat(type="json_object")
    assert api.json_schema is not None  # ResponseFormatIn requires it with this type
    return ResponseFormat(type="json_schema", json_schema=api.json_schema.schema_, strict=bool(api.json_schema.strict))


def token_label(token: str, token_id: int | None, as_id: bool) -> str:
    """How a logprob entry names its token: its text, or with vLLM's return_tokens_as_token_ids ``token_id:<id>``
    (which names tokens whose text is not valid UTF-8 alone, or that decode alike). A worker that predates carrying
    ids leaves the text."""
    return f"token_id:{token_id}" if as_id and token_id is not None else token


def chat_logprobs(entries: Sequence[TokenLogprob] | None, as_ids: bool = False) -> ChoiceLogprobs | None:
    """Logprobs in the chat API's form (choices[].logprobs.content); None when the request asked for none. ``as_ids``:
    tokens named by id (see token_label); ``bytes`` stays the token's text's."""
    if entries is None:
        return None

    def out(e: TopLogprob) -> dict[str, object]:
        return {
            "token": token_label(e.token, e.token_id, as_ids),
            "logprob": e.logprob,
            "bytes": list(e.token.encode("utf-8", errors="replace")),
        }

    return ChoiceLogprobs(
        content=[
            TokenLogprobOut(**out(e), top_logprobs=[TopLogprobOut(**out(t)) for t in e.top_logprobs]) for e in entries
        ]
    )


def text_logprobs(
    entries: Sequence[TokenLogprob] | None, start: int, prompt: PromptLogprobs | None = None, as_ids: bool = False
) -> CompletionLogprobs | None:
    """Logprobs in the legacy completions API's form, the first token starting at character ``start`` of the text.
    With ``prompt`` (an echoed prompt's), the prompt's tokens come first from character 0, as vLLM's server gives them:
    the first has no logprob (null), as nothing comes before it. ``as_ids``: tokens named by id (see token_label);
    ``text_offset`` still counts the text's characters."""
    if entries is None:
        return None
    out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])

    def add(token: str, token_id: int | None, logprob: float | None, top: dict[str, float] | None, at: int) -> int:
        out.tokens.append(token_label(token, token_id, as_ids))
        out.token_logprobs.append(logprob)
        out.top_logprobs.append(top)
        out.text_offset.append(at)
        return at + len(token)

    def add_entry(e: TokenLogprob, at: int) -> int:
        top = {token_label(t.token, t.token_id, as_ids): t.logprob for t in e.top_logprobs}
        return add(e.token, e.token_id, e.logprob, top, at)

    if prompt is not None:
        offset = add(prompt.first_token, prompt.first_token_id, None, None, 0)
        for e in prompt.tokens:
            offset = add_entry(e, offset)
    for e in entries:
        start = add_entry(e, start)
    return out


def usage_of(finals: Sequence[CompletionFinished], prompt_of: Sequence[int] | None = None) -> UsageOut:
    """The request's usage over its choices: each prompt counts once, as in OpenAI's API, and the completions add
    up. ``prompt_of``: which of the request's prompts each final answers (None: they share one)."""
    first_of_each: dict[int, CompletionFinished] = {}
    for prompt_index, final in zip(prompt_of or [0] * len(finals), finals, strict=True):
        first_of_each.setdefault(prompt_index, final)
    prompt = sum(f.usage.prompt_tokens for f in first_of_each.values())
    completion = sum(f.usage.completion_tokens for f in finals)
    cached_counts = [c for f in first_of_each.values() if (c := f.usage.cached_prompt_tokens) is not None]
    cached = sum(cached_counts) if cached_counts else None
    reasoning = [f.usage.reasoning_tokens for f in finals if f.usage.reasoning_tokens is not None]
    return UsageOut(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=None if cached is None else PromptTokensDetails(cached_tokens=cached),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=sum(reasoning)) if reasoning else None,
    )


@dataclass
class ReleaseGate:
    """Holds a request's output until its prompt is cleared, for prompts screened beside generation: the worker may
    answer before the safety stage does, and no generated text may reach the client before the verdict. A failure
    passes at once: it carries no generated text (a block from the safety stage, or the worker's own error)."""

    cleared: bool
    held: list[ReplyEvent] = field(default_factory=list)

    def admit(self, event: ReplyEvent) -> list[ReplyEvent]:
        """The events to deliver now, in order, given one that arrived."""
        if isinstance(event, PromptCleared):
            if self.cleared:
                return []
            self.cleared = True
            released, self.held = self.held, []
            return released
        if self.cleared or isinstance(event, GenerationFailed):
            return [event]
        self.held.append(event)
        return []


async def without_repeats(events: AsyncIterator[ReplyEvent]) -> AsyncIterator[ReplyEvent]:
    """Drops output the client already has, and never passes on output past a gap. When a worker dies mid-generation
    the request is generated again from the start by another worker; its deltas carry ``text_offset`` (and
    ``token_offset`` with logprobs), so the repeated part is cut and the client sees each piece of text, and each
    token's logprob, once. Tool calls' pieces carry ``arguments_offset``, and reasoning ``reasoning_offset``; they are
    cut the same way. A delta that starts past what was delivered means deltas were lost on the way (a broker away
    longer than the workers' producers wait: their records expired); the stream then passes no more deltas, and what
    the client lacks comes from the final event, which holds the whole completion, just before it."""
    delivered = delivered_tokens = delivered_reasoning = 0
    delivered_arguments: dict[int, int] = {}  # characters of each call's arguments delivered, by the call's index
    counted = 0  # tokens of the deltas passed on
    lost = False
    async for event in events:
        if isinstance(event, TokensGenerated) and event.text_offset is not None:
            if lost or _starts_past(event, delivered, delivered_tokens, delivered_reasoning, delivered_arguments):
                if not lost:
                    logger.warning(
                        "request %s: its reply deltas have a gap (lost on the way); the rest of the stream comes "
                        "with its final event",
                        event.request_id,
                    )
                lost = True
                continue
            update: dict[str, object] = {}
            end = event.text_offset + len(event.text)
            if event.text_offset < delivered:
                update["text"] = event.text[max(0, delivered - event.text_offset) :]
            calls = _new_call_pieces(event.tool_calls, delivered_arguments)
            if calls != event.tool_calls:
                update["tool_calls"] = calls
            new_tokens = False
            per_token = _per_token(event)
            if per_token and event.token_offset is not None:
                tokens_end = event.token_offset + max(len(values) for values in per_token.values())
                new_tokens = tokens_end > delivered_tokens
                if event.token_offset < delivered_tokens:
                    for name, values in per_token.items():
                        update[name] = values[max(0, delivered_tokens - event.token_offset) :]
                delivered_tokens = max(delivered_tokens, tokens_end)
            new_reasoning = False
            if event.reasoning_offset is not None:
                reasoning_end = event.reasoning_offset + len(event.reasoning)
                new_reasoning = reasoning_end > delivered_reasoning
                if event.reasoning_offset < delivered_reasoning:
                    update["reasoning"] = event.reasoning[max(0, delivered_reasoning - event.reasoning_offset) :]
                delivered_reasoning = max(delivered_reasoning, reasoning_end)
            if end <= delivered and not new_tokens and not calls and not new_reasoning:
                continue
            if update:
                event = event.model_copy(update=update)
            delivered = max(delivered, end)
            counted += event.token_count
        elif isinstance(event, TokensGenerated):
            delivered += len(event.text)
            counted += event.token_count
        elif isinstance(event, CompletionFinished) and lost:
            rest = _rest_of(event, delivered, delivered_tokens, delivered_reasoning, counted)
            if rest is not None:
                yield rest  # the tool calls' rest is added from the final by the stream itself (StreamedCalls.rest)
        yield event


def _starts_past(
    event: TokensGenerated,
    delivered: int,
    delivered_tokens: int,
    delivered_reasoning: int,
    delivered_arguments: dict[int, int],
) -> bool:
    """Whether ``event`` begins after what was delivered (text, logprobs, reasoning or a call's arguments): the deltas
    between were lost. A lost delta moved at least one of their offsets, so it shows in the next."""
    if event.text_offset is not None and event.text_offset > delivered:
        return True
    if _per_token(event) and event.token_offset is not None and event.token_offset > delivered_tokens:
        return True
    if event.reasoning_offset is not None and event.reasoning_offset > delivered_reasoning:
        return True
    for piece in event.tool_calls:
        have = delivered_arguments.get(piece.index)
        if piece.arguments_offset > (have or 0) or (have is None and piece.index > len(delivered_arguments)):
            return True
    return False


def _per_token(event: TokensGenerated) -> dict[str, list[Any]]:
    """What ``event`` carries one of per token (its logprobs, its token ids), by field name: cut by token_offset."""
    return {
        name: values
        for name, values in (("logprobs", event.logprobs), ("token_ids", event.token_ids))
        if values is not None
    }


def _rest_of(
    final: CompletionFinished, delivered: int, delivered_tokens: int, delivered_reasoning: int, counted: int
) -> TokensGenerated | None:
    """A delta with what the final event holds past what was delivered: its text, reasoning, logprobs and token ids."""
    text = final.text[delivered:]
    reasoning = (final.reasoning or "")[delivered_reasoning:]
    logprobs = final.logprobs[delivered_tokens:] if final.logprobs is not None else None
    token_ids = final.token_ids[delivered_tokens:] if final.token_ids is not None else None
    if not text and not reasoning and not logprobs and not token_ids:
        return None
    return TokensGenerated(
        request_id=final.request_id,
        sequence=final.sequence,
        text=text,
        token_count=len(logprobs or token_ids or []) or max(0, final.usage.completion_tokens - counted),
        text_offset=delivered,
        logprobs=logprobs or None,
        token_ids=token_ids or None,
        token_offset=delivered_tokens if logprobs or token_ids else None,
        prompt_logprobs=final.prompt_logprobs if counted == 0 else None,
        prompt_token_ids=final.prompt_token_ids if counted == 0 else None,
        prompt_token_count=final.usage.prompt_tokens if counted == 0 else None,
        reasoning=reasoning,
        reasoning_offset=delivered_reasoning if final.reasoning is not None else None,
    )


async def without_reasoning(events: AsyncIterator[ReplyEvent]) -> AsyncIterator[ReplyEvent]:
    """The events with a reasoning model's thinking left out (include_reasoning false); its tokens still count. The
    generated token ids go too, of every event: they would spell out the thinking (as in vLLM's server)."""
    async for event in events:
        if isinstance(event, TokensGenerated):
            if event.token_ids is not None:
                event = event.model_copy(update={"token_ids": None})
            if event.reasoning:
                # an event of thinking alone is kept, empty: a stream writes no chunk for it, and its tokens still
                # count in the usage so far (and the first brings the prompt's ids and token count)
                event = event.model_copy(update={"reasoning": ""})
        elif isinstance(event, CompletionFinished):
            if event.reasoning is not None or event.token_ids is not None:
                event = event.model_copy(update={"reasoning": None, "token_ids": None})
        yield event


def _new_call_pieces(pieces: list[ToolCallPiece], delivered: dict[int, int]) -> list[ToolCallPiece]:
    """The parts of ``pieces`` not delivered yet; ``delivered`` counts each call's arguments delivered so far."""
    new = []
    for piece in pieces:
        have = delivered.get(piece.index)
        end = piece.arguments_offset + len(piece.arguments)
        if have is not None and end <= have:
            continue  # a repeat, opening included
        if have is not None and piece.arguments_offset < have:
            piece = piece.model_copy(
                update={"arguments": piece.arguments[have - piece.arguments_offset :], "arguments_offset": have}
            )
        new.append(piece)
        delivered[piece.index] = end
    return new


async def merged(streams: Sequence[AsyncIterator[ReplyEvent]]) -> AsyncIterator[IndexedEvent]:
    """The reply events of a request's choices as they arrive, each with its choice's index. A stream that raises
    (TimeoutError at the deadline) ends the whole; the others are then no longer read."""
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    arrivals: asyncio.Queue[tuple[int, ReplyEvent | Exception | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[ReplyEvent]) -> None:
        try:
            async for event in stream:
                await arrivals.put((index, event))
        except Exception as exc:
            await arrivals.put((index, exc))
            return
        await arrivals.put((index, None))

    pumps = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        open_streams = len(streams)
        while open_streams:
            index, item = await arrivals.get()
            if item is None:
                open_streams -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


AbandonReason = Literal["client_disconnected", "deadline_exceeded", "requested"]


async def counting_tokens(
    events: AsyncIterator[ReplyEvent], counts: list[int], index: int
) -> AsyncIterator[ReplyEvent]:
    """Passes a choice's events through, adding the tokens of its deltas to ``counts[index]``: what it has generated
    so far, for a request that ends before its answer does."""
    async for event in events:
        if isinstance(event, TokensGenerated):
            counts[index] += event.token_count
        yield event


async def watched(
    events: AsyncIterator[IndexedEvent],
    on_final: Callable[[int, CompletionFinished | GenerationFailed], None],
    on_abandoned: Callable[[AbandonReason, list[int]], None],
    on_first: Callable[[], None] = lambda: None,
    choices: int = 1,
) -> AsyncIterator[IndexedEvent]:
    """Passes events through and reports how the request went: ``on_first`` at its first event, ``on_final`` with
    each choice's last event, and ``on_abandoned`` with the choices still generating when nobody will read them: the
    reader stopped first (the client went away, or the deadline passed), or another choice failed, which fails the
    request. So that work can be cancelled. Callbacks must not block: they run while the stream is being torn down."""
    open_choices = set(range(choices))
    first = False
    reason: AbandonReason = "client_disconnected"
    try:
        async for index, event in events:
            if not first:
                first = True
                on_first()
            if isinstance(event, CompletionFinished | GenerationFailed):
                open_choices.discard(index)
                on_final(index, event)
                if isinstance(event, GenerationFailed) and open_choices:
                    on_abandoned("requested", sorted(open_choices))
                    open_choices.clear()
            yield index, event
    except TimeoutError:
        reason = "deadline_exceeded"
        raise
    finally:
        if open_choices:
            on_abandoned(reason, sorted(open_choices))


async def final_events(events: AsyncIterator[IndexedEvent], choices: int = 1) -> list[CompletionFinished]:
    """Non-streaming: waits for every choice's result, in choice order; a failure and the deadline become ApiError."""
    finals: dict[int, CompletionFinished] = {}
    try:
        async for index, event in events:
            if isinstance(event, GenerationFailed):
                raise failure_error(event)
            if isinstance(event, CompletionFinished):
                finals[index] = event
                if len(finals) == choices:
                    return [finals[i] for i in range(choices)]
    except TimeoutError:
        raise DEADLINE_EXCEEDED from None
    raise ApiError(503, "the reply stream ended without a result", "server_error", code="no_result")


def chat_completion(
    request_id: str,
    model: str,
    finals: Sequence[CompletionFinished],
    echoes: Sequence[str] = (),
    tokens_as_ids: bool = False,
) -> ChatCompletion:
    """``echoes``: what each choice's content begins with (vLLM's chat echo of the last, assistant's, message).
    ``tokens_as_ids``: logprobs name tokens by id (return_tokens_as_token_ids)."""
    return ChatCompletion(
        id=request_id,
        model=model,
        usage=usage_of(finals),
        choices=[
            Choice(
                index=i,
                message=ChoiceMessage(
                    content=None if f.tool_calls and not echo + f.text else echo + f.text,
                    tool_calls=_tool_calls_out(f.tool_calls),
                    reasoning=f.reasoning,
                ),
                finish_reason=f.finish_reason,
                logprobs=chat_logprobs(f.logprobs, tokens_as_ids),
                token_ids=f.token_ids,
            )
            for i, (f, echo) in enumerate(zip(finals, echoes or [""] * len(finals), strict=True))
        ],
        system_fingerprint=finals[0].variant,
        prompt_token_ids=finals[0].prompt_token_ids,  # the choices share the prompt
    )


def _tool_calls_out(calls: Sequence[ToolCall] | None) -> list[ToolCallOut] | None:
    if not calls:
        return None
    return [
        ToolCallOut(id=c.id, function=FunctionCallOut(name=c.function.name, arguments=c.function.arguments))
        for c in calls
    ]


def text_completion(
    request_id: str,
    model: str,
    finals: Sequence[CompletionFinished],
    echoes: Sequence[str | None] = (),
    prompt_only: bool = False,
    prompt_of: Sequence[int] | None = None,
    tokens_as_ids: bool = False,
) -> Completion:
    """``echoes``: with echo, each choice's prompt, put before its text (None: a prompt given as token ids, whose text
    the reply brings). ``prompt_only`` (max_tokens 0 with echo): each choice is the echoed prompt alone, the token
    generated dropped. ``prompt_of``: as for usage_of. ``tokens_as_ids``: logprobs name tokens by id
    (return_tokens_as_token_ids)."""

    def generated(f: CompletionFinished) -> list[TokenLogprob] | None:
        return [] if prompt_only and f.logprobs is not None else f.logprobs

    echoes = echoes or [""] * len(finals)
    texts = [echo if echo is not None else f.prompt_text or "" for f, echo in zip(finals, echoes, strict=True)]
    return Completion(
        id=request_id,
        model=model,
        usage=usage_of(finals, prompt_of),
        choices=[
            CompletionChoice(
                index=i,
                text=echo if prompt_only else echo + f.text,
                finish_reason=f.finish_reason,
                logprobs=text_logprobs(generated(f), len(echo), f.prompt_logprobs if echo else None, tokens_as_ids),
                prompt_token_ids=f.prompt_token_ids,
                token_ids=[] if prompt_only and f.token_ids is not None else f.token_ids,
            )
            for i, (f, echo) in enumerate(zip(finals, texts, strict=True))
        ],
        system_fingerprint=finals[0].variant,
    )


async def collect(request_id: str, model: str, events: AsyncIterator[IndexedEvent], choices: int = 1) -> ChatCompletion:
    """Non-streaming chat completion."""
    return chat_completion(request_id, model, await final_events(events, choices))


def _sse(payload: object) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, separators=(',', ':'))}\n\n"


@dataclass
class StreamedCalls:
    """The tool calls a stream has sent so far, by choice and call index: what each call's next delta needs (its id,
    type and name only in its first), and what the final answer adds to the pieces (all of a call a worker sent whole,
    as a response held for review and then released)."""

    arguments: dict[tuple[int, int], str] = field(default_factory=dict)

    def pieces(self, choice: int, pieces: Sequence[ToolCallPiece]) -> list[DeltaToolCall]:
        deltas = []
        for piece in pieces:
            opening = (choice, piece.index) not in self.arguments
            self.arguments[(choice, piece.index)] = self.arguments.get((choice, piece.index), "") + piece.arguments
            deltas.append(_call_delta(piece.index, piece.id, piece.name, piece.arguments, opening))
        return deltas

    def rest(self, choice: int, calls: Sequence[ToolCall]) -> list[DeltaToolCall]:
        deltas = []
        for i, call in enumerate(calls):
            sent = self.arguments.get((choice, i))
            if sent is None:
                deltas.append(_call_delta(i, call.id, call.function.name, call.function.arguments, opening=True))
            elif len(call.function.arguments) > len(sent) and call.function.arguments.startswith(sent):
                deltas.append(_call_delta(i, call.id, call.function.name, call.function.arguments[len(sent) :]))
        return deltas


def _call_delta(index: int, call_id: str, name: str, arguments: str, opening: bool = False) -> DeltaToolCall:
    if not opening:
        return DeltaToolCall(index=index, function=DeltaFunction(arguments=arguments))
    return DeltaToolCall(
        index=index, id=call_id, type="function", function=DeltaFunction(name=name, arguments=arguments)
    )


class UsageSoFar:
    """vLLM's continuous_usage_stats: each chunk of a choice carries the usage so far, its prompt's tokens and the
    tokens generated by the time the chunk is written (none in a chat's opening chunk), as vLLM's server sends it. It
    counts the reply events a stream reads (``counting``) and stamps the chunks written from them (``stamping``)."""

    def __init__(self) -> None:
        self._prompt: dict[int, int] = {}  # by choice, once a reply has brought it
        self._generated: dict[int, int] = {}

    async def counting(self, events: AsyncIterator[IndexedEvent]) -> AsyncIterator[IndexedEvent]:
        async for index, event in events:
            if isinstance(event, TokensGenerated):
                if event.prompt_token_count is not None:
                    self._prompt.setdefault(index, event.prompt_token_count)
                self._generated[index] = self._generated.get(index, 0) + event.token_count
            elif isinstance(event, CompletionFinished):
                self._prompt.setdefault(index, event.usage.prompt_tokens)
                self._generated[index] = event.usage.completion_tokens
            yield index, event

    def stamping(self, write: Callable[..., str]) -> Callable[..., str]:
        """``write``, a chunk writer, with the usage so far added to each chunk it writes."""
        return lambda *args, **kwargs: self._stamped(write(*args, **kwargs))

    def _stamped(self, sse: str) -> str:
        if not sse:  # a writer's "no chunk"
            return sse
        chunk = json.loads(sse.removeprefix("data: "))
        index = chunk["choices"][0]["index"]
        prompt = self._prompt.get(index)
        if prompt is None:  # no reply has said yet (a worker that predates the count says it only at the end)
            return sse
        opening = "role" in chunk["choices"][0].get("delta", {})
        generated = 0 if opening else self._generated.get(index, 0)
        chunk["usage"] = {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}
        return _sse(chunk)


async def stream_sse(
    request_id: str,
    model: str,
    include_usage: bool,
    events: AsyncIterator[IndexedEvent],
    kind: ApiKind = "chat",
    echoes: Sequence[str | None] = (),
    choices: int = 1,
    echo_logprobs: bool = False,
    prompt_only: bool = False,
    prompt_of: Sequence[int] | None = None,
    token_ids: bool = False,
    tokens_as_ids: bool = False,
    continuous_usage: bool = False,
) -> AsyncIterator[str]:
    """Streaming: OpenAI's chunk sequence (chat: role, content deltas, finish reason; text: text deltas, finish reason)
    for each choice, its index in every chunk and choices interleaved as their text arrives; then, once every choice
    has finished, the usage when asked, and [DONE]. Failures after the stream began arrive as an ``error`` object, as
    OpenAI sends them. ``echoes``: with echo, each choice's prompt (a chat's: its last, assistant's, message), sent
    first. With ``echo_logprobs`` the echoed prompt's chunk waits for the choice's first reply, which carries the
    prompt's logprobs. With ``prompt_only`` (max_tokens 0 with echo) no generated text is sent. ``prompt_of``: as
    for usage_of. With ``token_ids`` (return_token_ids), each choice's first chunk carries its prompt's token ids (a
    chat's opening chunk then waits for the choice's first reply, which brings them), and each chunk the ids of the
    tokens it shows (a chunk of its own for tokens without text, as an end-of-sequence token). ``tokens_as_ids``:
    logprobs name tokens by id (return_tokens_as_token_ids). With ``continuous_usage`` (vLLM's continuous_usage_stats)
    every chunk of a choice carries the usage so far (UsageSoFar), and its first chunk waits for its first reply,
    which brings the prompt's token count."""
    created = int(time.time())
    chat_chunk = partial(_chat_chunk, request_id, created, model)
    chunk: Callable[..., str] = partial(_chat_chunk if kind == "chat" else _text_chunk, request_id, created, model)
    text_only_chunk = text_only_chunk_writer(request_id, created, model, kind)
    reasoning_chunk = text_only_chunk_writer(request_id, created, model, "chat", key="reasoning")
    if continuous_usage:
        usage_so_far = UsageSoFar()
        events = usage_so_far.counting(events)
        chat_chunk, chunk, text_only_chunk, reasoning_chunk = (
            usage_so_far.stamping(write) for write in (chat_chunk, chunk, text_only_chunk, reasoning_chunk)
        )

    echoes = echoes or [""] * choices
    # an echo waits for its choice's first reply when that brings the prompt's logprobs, or its text (a prompt given
    # as token ids: None), or on the text route the prompt's token count for the usage so far (a chat's echo follows
    # its opening, below)
    echo_waits = {
        i
        for i in range(choices)
        if echoes[i] is None or ((echo_logprobs or (continuous_usage and kind == "text")) and echoes[i])
    }
    # a chat's opening waits for the prompt's token ids, or its token count; a text stream has none, its first chunk
    # carries them
    opening_waits = set(range(choices)) if (token_ids or continuous_usage) and kind == "chat" else set()
    prompt_ids: dict[int, list[int]] = {}  # by choice: the prompt's token ids, until a chunk has carried them
    replied: set[int] = set()  # the choices a reply came for

    def prompt_ids_of(index: int) -> list[int] | None:
        return prompt_ids.pop(index, None)

    for index in range(choices):
        if index in echo_waits or index in opening_waits:
            continue
        if first := chunk(echoes[index], None, index, opening=True):
            yield first
        if kind == "chat" and echoes[index]:  # after the role, as vLLM's server sends a chat's echo
            yield text_only_chunk(echoes[index], index)
    finals: dict[int, CompletionFinished] = {}
    # text route: where each choice's next token starts
    token_starts = {i: len(echoes[i] or "") for i in range(choices)}
    calls = StreamedCalls()
    try:
        async for index, event in events:
            if token_ids and isinstance(event, TokensGenerated | CompletionFinished) and index not in replied:
                replied.add(index)  # the choice's first reply: the one that brings the prompt's ids
                if event.prompt_token_ids is not None:
                    prompt_ids[index] = event.prompt_token_ids
            if index in opening_waits and isinstance(event, TokensGenerated | CompletionFinished):
                opening_waits.discard(index)
                yield chat_chunk(None, None, index, opening=True, prompt_token_ids=prompt_ids_of(index))
                if echoes[index]:
                    yield text_only_chunk(echoes[index] or "", index)
            if index in echo_waits and isinstance(event, TokensGenerated | CompletionFinished):
                echo_waits.discard(index)
                echo = echoes[index]
                if echo is None:
                    echo = event.prompt_text or ""
                    token_starts[index] = len(echo)
                # a reply from a worker that predates prompt logprobs carries none: the prompt then comes without
                prompt = (
                    None
                    if event.prompt_logprobs is None
                    else text_logprobs([], 0, event.prompt_logprobs, tokens_as_ids)
                )
                yield chunk(echo, None, index, logprobs=prompt, prompt_token_ids=prompt_ids_of(index))
            if isinstance(event, TokensGenerated):
                ids = None if prompt_only else event.token_ids
                shows_text = not prompt_only and bool(event.text or event.logprobs)
                if event.tool_calls:  # chat only: tools are refused on the text route
                    yield chat_chunk(
                        None,
                        None,
                        index,
                        tool_calls=calls.pieces(index, event.tool_calls),
                        token_ids=None if event.reasoning or shows_text else ids,
                    )
                if event.reasoning:  # chat only: a raw prompt's output is not read for reasoning
                    if event.text or not event.logprobs:  # the text's chunk carries the logprobs, when there is text
                        if ids is None or shows_text:
                            yield reasoning_chunk(event.reasoning, index)
                        else:
                            yield chat_chunk(None, None, index, reasoning=event.reasoning, token_ids=ids)
                    else:
                        yield chat_chunk(
                            None,
                            None,
                            index,
                            logprobs=chat_logprobs(event.logprobs, tokens_as_ids),
                            reasoning=event.reasoning,
                            token_ids=ids,
                        )
                        continue
                if not shows_text:
                    if ids and not event.tool_calls and not event.reasoning:  # tokens without text: their own chunk
                        yield chunk(None, None, index, token_ids=ids, prompt_token_ids=prompt_ids_of(index))
                    continue
                logprobs: ChoiceLogprobs | CompletionLogprobs | None = None
                if kind == "chat":
                    logprobs = chat_logprobs(event.logprobs, tokens_as_ids)
                elif event.logprobs is not None:
                    logprobs = text_logprobs(event.logprobs, token_starts[index], as_ids=tokens_as_ids)
                    token_starts[index] += sum(len(e.token) for e in event.logprobs)
                if logprobs is None and ids is None and index not in prompt_ids:
                    yield text_only_chunk(event.text, index)
                else:
                    yield chunk(
                        event.text, None, index, logprobs=logprobs, token_ids=ids, prompt_token_ids=prompt_ids_of(index)
                    )
            elif isinstance(event, CompletionFinished):
                finals[index] = event
                if rest := calls.rest(index, event.tool_calls or []):  # what the pieces did not bring
                    yield chat_chunk(None, None, index, tool_calls=rest)
                yield chunk(
                    None, event.finish_reason, index, fingerprint=event.variant, prompt_token_ids=prompt_ids_of(index)
                )
                if len(finals) < choices:
                    continue
                if include_usage:
                    variant = finals[0].variant
                    yield _sse(
                        {
                            "id": request_id,
                            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": usage_of([finals[i] for i in range(choices)], prompt_of).model_dump(),
                        }
                        | ({"system_fingerprint": variant} if variant else {})
                    )
                break
            elif isinstance(event, GenerationFailed):
                yield _sse(failure_error(event).body())
                break
    except ApiError as exc:
        yield _sse(exc.body())
    except TimeoutError:
        yield _sse(DEADLINE_EXCEEDED.body())
    yield _sse("[DONE]")


def text_only_chunk_writer(
    request_id: str, created: int, model: str, kind: ApiKind, key: Literal["content", "reasoning"] = "content"
) -> Callable[[str, int], str]:
    """Writes a stream's chunks of text alone (no logprobs, tool calls or finish reason), the most frequent chunk by
    far, as the same bytes as ``_chat_chunk`` and ``_text_chunk`` give them, but without building and dumping a model
    for each: only the text is encoded per chunk. ``key``: a chat delta's content, or its reasoning."""
    object_name = "chat.completion.chunk" if kind == "chat" else "text_completion"
    head = (
        f'data: {{"id":{json.dumps(request_id)},"object":"{object_name}","created":{created},'
        f'"model":{json.dumps(model)},"choices":[{{"index":'
    )
    if kind == "chat":
        return lambda text, index: f'{head}{index},"delta":{{"{key}":{json.dumps(text)}}},"finish_reason":null}}]}}\n\n'
    return lambda text, index: f'{head}{index},"text":{json.dumps(text)},"finish_reason":null,"logprobs":null}}]}}\n\n'


def _chat_chunk(
    request_id: str,
    created: int,
    model: str,
    text: str | None,
    finish_reason: str | None,
    index: int,
    opening: bool = False,
    fingerprint: str | None = None,
    logprobs: ChoiceLogprobs | CompletionLogprobs | None = None,
    tool_calls: Sequence[DeltaToolCall] = (),
    reasoning: str | None = None,
    token_ids: list[int] | None = None,
    prompt_token_ids: list[int] | None = None,
) -> str:
    if opening:
        delta = Delta(role="assistant", content="")
    elif tool_calls:
        delta = Delta(tool_calls=list(tool_calls))
    else:
        delta = Delta(content=text, reasoning=reasoning)
    assert logprobs is None or isinstance(logprobs, ChoiceLogprobs)
    c = ChatCompletionChunk(
        id=request_id,
        created=created,
        model=model,
        choices=[
            ChunkChoice(index=index, delta=delta, finish_reason=finish_reason, logprobs=logprobs, token_ids=token_ids)
        ],
        system_fingerprint=fingerprint,
        prompt_token_ids=prompt_token_ids,
    )
    return _sse(c.model_dump(exclude_none=True, exclude={"usage"}) | _with_null_finish(c))


def _text_chunk(
    request_id: str,
    created: int,
    model: str,
    text: str | None,
    finish_reason: str | None,
    index: int,
    opening: bool = False,
    fingerprint: str | None = None,
    logprobs: ChoiceLogprobs | CompletionLogprobs | None = None,
    token_ids: list[int] | None = None,
    prompt_token_ids: list[int] | None = None,
) -> str:
    if opening and not text:
        return ""  # OpenAI's text stream has no opening chunk; with echo the first chunk is the prompt
    assert logprobs is None or isinstance(logprobs, CompletionLogprobs)
    c = Completion(
        id=request_id,
        created=created,
        model=model,
        choices=[
            CompletionChoice(
                index=index,
                text=text or "",
                finish_reason=finish_reason,
                logprobs=logprobs,
                prompt_token_ids=prompt_token_ids,
                token_ids=token_ids,
            )
        ],
        system_fingerprint=fingerprint,
    )
    return _sse(c.model_dump(exclude={"usage"} | ({"system_fingerprint"} if fingerprint is None else set())))


def _with_null_finish(c: ChatCompletionChunk) -> dict[str, object]:
    # OpenAI sends "finish_reason": null on every chunk but the last; exclude_none would drop it.
    return {"choices": [ch.model_dump(exclude_none=True) | {"finish_reason": ch.finish_reason} for ch in c.choices]}
