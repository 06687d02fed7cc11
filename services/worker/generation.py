"""Serving one request on the engine: stream coalesced deltas, then a final event. Never drops a request silently:
every request ends with CompletionFinished or GenerationFailed, except one handed back on shutdown (its record stays
uncommitted, so another worker generates it again from the start, with the same seed)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Literal

from aiokafka.errors import MessageSizeTooLargeError

from services.safety.output import ContentBlocked, OutputDelta, OutputGuard, RequestOutputScreen
from services.safety.review import SCREENING_UNAVAILABLE
from services.worker.engine import Engine, InvalidRequest
from services.worker.harmony import HarmonyReader, harmony_then
from services.worker.reasoning import ReasoningReader, think_then, thinking_room
from services.worker.tool_calls import ToolCallReader, calls_openings, forced_schema, keeps_special_tokens
from services.worker.vllm_parsing import VllmReading
from shared.contracts import (
    CompletionFinished,
    CompletionRequested,
    GenerationFailed,
    Message,
    PromptLogprobs,
    ResponseFormat,
    SamplingParams,
    TokenLogprob,
    TokensGenerated,
    ToolCallPiece,
    Usage,
    utc_now,
)
from shared.kafka import UNWRITABLE_TOPIC_ERRORS
from shared.outages import DependencyUnavailable

logger = logging.getLogger(__name__)

PublishReply = Callable[[CompletionRequested, Message], Awaitable[None]]

StopReason = Literal["cancelled", "deadline_exceeded", "handed_back"]

_STOPPED_MESSAGES: dict[StopReason, str] = {
    "cancelled": "the request was cancelled",
    "deadline_exceeded": "the request's deadline passed during generation",
    "handed_back": "the worker shut down",
}


@dataclass
class RequestControl:
    """Lets the worker stop a running request from outside (cancel event, deadline, shutdown). The first reason
    wins; ``ended_at`` is when the engine stream really ended, so the time from stop to abort can be measured."""

    stop_reason: StopReason | None = None
    stop_requested_at: float | None = None
    ended_at: float | None = None
    decided_before_s: float | None = None  # how long before the stop its cancel was decided (by the ingress, say)

    def stop(self, reason: StopReason, decided_at: datetime | None = None) -> bool:
        """Marks the request stopped; returns False when it already was (the caller then need not abort it again).
        ``decided_at``: when the cancel that stops it was decided, on the deciding service's clock."""
        if self.stop_reason is not None:
            return False
        self.stop_reason, self.stop_requested_at = reason, time.monotonic()
        if decided_at is not None:
            self.decided_before_s = max(0.0, (utc_now() - decided_at).total_seconds())
        return True

    def stop_to_abort_s(self) -> float | None:
        """From the stop reaching this worker to the engine's stream ending; None unless both happened."""
        if self.stop_requested_at is None or self.ended_at is None:
            return None
        return max(0.0, self.ended_at - self.stop_requested_at)

    def decision_to_abort_s(self) -> float | None:
        """From the cancel's decision to the engine's stream ending: Kafka's delivery of the cancel included."""
        stop_to_abort = self.stop_to_abort_s()
        if self.decided_before_s is None or stop_to_abort is None:
            return None
        return self.decided_before_s + stop_to_abort


def seeded(sampling: SamplingParams, request_id: str) -> SamplingParams:
    """A request without a seed gets one derived from its id, so a redelivered request samples the same text again and
    readers can drop the part they already have (TokensGenerated.text_offset)."""
    if sampling.seed is not None:
        return sampling
    digest = hashlib.sha256(request_id.encode()).digest()
    return sampling.model_copy(update={"seed": int.from_bytes(digest[:4], "big") & 0x7FFFFFFF})


NOTHING = OutputDelta("", 0)


@dataclass
class DeltaBuffer:
    """Gathers engine steps into deltas so Kafka carries few records without visible delay: the first delta goes out at
    once (time to first token is what users feel most), later ones at most once per ``window_s``. The windows are one
    grid on the process's clock, shared by every request, so the deltas of the requests an engine steps together fall
    due at the same step and leave in one produce request, not one each."""

    window_s: float
    pending: OutputDelta = NOTHING
    last_flush: float | None = None

    def add(self, step: OutputDelta, now: float) -> OutputDelta | None:
        """Adds a step; returns the delta to send now, if one is due."""
        self.pending = self.pending.then(step)
        due = (
            self.last_flush is None
            or self.window_s <= 0
            or now // self.window_s > self.last_flush // self.window_s  # a window boundary passed since the last
        )
        if self.pending.text and due:
            self.last_flush = now
            return self.take()
        return None

    def take(self) -> OutputDelta | None:
        """Empties the buffer. Tokens without text (an end-of-sequence token) still count, so the deltas' token
        counts always add up to the completion's."""
        if not self.pending.text and not self.pending.tokens:
            return None
        delta, self.pending = self.pending, NOTHING
        return delta


async def serve_request(
    engine: Engine,
    request: CompletionRequested,
    publish: PublishReply,
    coalesce_ms: int,
    control: RequestControl | None = None,
    guard: OutputGuard | None = None,
    priority: int = 0,
) -> bool:
    """Generates ``request`` and publishes its replies, screening the output when ``guard`` is set; returns whether it
    is done here (False only when it was handed back; a final held for review counts as done). ``priority``: its
    place among requests waiting for a seat in the engine (lower first, see Engine.generate)."""
    control = control or RequestControl()
    sequence = 0
    text_offset = 0
    if request.deadline_at is not None and request.deadline_at <= utc_now():
        await publish(
            request,
            GenerationFailed(
                request_id=request.request_id,
                sequence=0,
                code="deadline_exceeded",
                message="the request's deadline passed before generation started",
                retryable=True,
            ),
        )
        return True
    if control.stop_reason is not None:  # cancelled before it reached the worker
        await _publish_stopped(request, publish, control.stop_reason, sequence)
        return control.stop_reason != "handed_back"

    with_logprobs = request.sampling.logprobs is not None
    with_token_ids = request.return_token_ids
    token_offset = reasoning_offset = 0
    prompt_logprobs: PromptLogprobs | None = None  # from the engine's first step, when asked for
    # a reasoning model's chat: its thinking is read apart (see reasoning; gpt-oss's channels, see harmony)
    thoughts: ReasoningReader | HarmonyReader | None = None
    # a model whose registry entry names vLLM's parsers: they read its thinking and its calls (see vllm_parsing)
    parsing: VllmReading | None = None
    reads_reasoning = False  # whether the output is read for thinking, by either
    prompt_ids: list[int] | None = None  # the prompt's tokens, when a reader needed them before generation
    given_prompt_text: str | None = None  # the text of a prompt given as token ids: replies carry it, for an echo
    screen: RequestOutputScreen | None = None  # the output's screening, when the worker screens outputs

    def next_event(delta: OutputDelta, calls: Sequence[ToolCallPiece] = (), reasoning: str = "") -> TokensGenerated:
        """The stream's next event, carrying ``delta``; it counts as sent."""
        nonlocal sequence, text_offset, token_offset, reasoning_offset
        event = TokensGenerated(
            request_id=request.request_id,
            sequence=sequence,
            text=delta.text,
            token_count=delta.tokens,
            text_offset=text_offset,
            logprobs=list(delta.logprobs) if with_logprobs else None,
            token_offset=token_offset if with_logprobs or with_token_ids else None,
            token_ids=list(delta.token_ids) if with_token_ids else None,
            prompt_logprobs=prompt_logprobs if sequence == 0 else None,
            prompt_text=given_prompt_text if sequence == 0 else None,
            prompt_token_count=prompt_tokens if sequence == 0 else None,
            prompt_token_ids=prompt_ids if with_token_ids and sequence == 0 else None,
            tool_calls=list(calls),
            reasoning=reasoning,
            reasoning_offset=reasoning_offset if reads_reasoning else None,
        )
        sequence += 1
        text_offset += len(delta.text)
        token_offset += delta.tokens
        reasoning_offset += len(reasoning)
        return event

    reader = ToolCallReader(request, engine.tool_call_format)
    # tokens (their count, logprobs and ids) of text the readers hold back, a tag or a call not yet readable: they go
    # out with the next delta
    held_tokens = NOTHING

    # what the readers made of output held for review: it goes out as one delta if a reviewer releases it, as the
    # stream would have carried it (vLLM's parsers may read a whole output a little otherwise than its stream)
    withheld, withheld_reasoning = NOTHING, ""

    async def send_delta(delta: OutputDelta, calls: Sequence[ToolCallPiece] = (), reasoning: str = "") -> None:
        """Sends a readable delta to a streaming client, or keeps it once the output is held for review (without its
        calls' pieces: the final event brings the calls whole)."""
        nonlocal withheld, withheld_reasoning
        if screen is not None and screen.held is not None:
            withheld = withheld.then(delta)
            withheld_reasoning += reasoning
        elif request.stream:
            await publish(request, next_event(delta, calls, reasoning))

    async def send_readable(delta: OutputDelta | None) -> None:
        """Sends what of a screened delta is for the client: its reasoning, its text, and the pieces of the tool calls
        it wrote."""
        nonlocal held_tokens
        if delta is None:
            return
        if reader.mode == "text" and thoughts is None and parsing is None:
            await send_delta(delta)
            return
        if parsing is not None:
            reasoning, text, calls = parsing.feed(delta.text)
        else:
            reasoning, text = thoughts.feed(delta.text) if thoughts is not None else ("", delta.text)
        if parsing is None or not parsing.reads_calls:
            text = reader.feed(text)
            calls = reader.pieces()
        tokens = held_tokens.then(delta._replace(text=""))
        if not text and not calls and not reasoning:
            held_tokens = tokens
            return
        held_tokens = NOTHING
        await send_delta(tokens._replace(text=text), calls, reasoning)

    deadline_timer = _abort_at_deadline(engine, request, control)
    try:
        screen = await guard.start(request) if guard else None  # output screening (services/safety/output.py)
        if request.prompt is not None:
            prompt = request.prompt
        elif request.prompt_token_ids is not None:
            prompt = given_prompt_text = engine.prompt_text(request.prompt_token_ids)
            prompt_ids = request.prompt_token_ids
        else:
            tools = request.tools if reader.mode != "text" else None
            prompt = engine.render_prompt(
                request.messages,
                tools,
                request.enable_thinking,
                request.reasoning_effort,
                request.add_generation_prompt,
                request.continue_final_message,
                request.documents,
            )
        if request.truncate_prompt_tokens is not None:
            whole = prompt_ids if prompt_ids is not None else engine.token_ids(prompt)
            prompt_ids = engine.truncated(whole, request.truncate_prompt_tokens, request.truncation_side)
            if len(prompt_ids) < len(whole):  # what the model reads is what the readers and an echo go by
                prompt = engine.prompt_text(prompt_ids)
            if not request.is_chat():
                given_prompt_text = prompt  # an echo shows the prompt as cut
        sampling = seeded(request.sampling, request.request_id)
        if (schema := forced_schema(request)) is not None:  # the ingress refuses response_format with forced calls
            sampling = sampling.model_copy(
                update={"response_format": ResponseFormat(type="json_schema", json_schema=schema)}
            )
        grammar_first = sampling.response_format is not None or sampling.structured_outputs is not None
        thinking_grammar = None  # a reasoning model's: it thinks first, then answers under the grammar (see reasoning)
        pieces: list[str] = []
        step_tokens: list[tuple[int, ...]] = []  # each step's, beside its text in pieces
        parsers = engine.vllm_parsers
        if parsers is not None and parsers.reads(request):
            if request.thinking_token_budget is not None and parsers.reasoning_parser is not None:
                raise InvalidRequest(
                    f"{request.model}'s thinking is read by vLLM's {parsers.reasoning_parser} parser, which takes no "
                    "thinking budget here",
                    param="thinking_token_budget",
                )
            # the prompt's tokens tell a reasoning parser whether the template closed the think block already
            if prompt_ids is None:
                prompt_ids = engine.token_ids(prompt) if parsers.reasoning_parser else None
            parsing = parsers.reading(request, prompt_ids or [], pieces, step_tokens)
            reads_reasoning = parsers.reasoning_parser is not None
        markers = engine.think_markers
        if markers is not None and reader.mode == "auto" and (openings := calls_openings(engine.tool_call_format)):
            markers = markers._replace(answer_starts=openings)  # a call straight from its thoughts ends them
        # a model whose entry names vLLM's parsers has its thinking read by a reasoning parser only, as in vLLM
        if request.is_chat() and parsers is None and (engine.speaks_harmony or markers is not None):
            budget = request.thinking_token_budget
            if grammar_first or budget is not None:
                compose = (
                    partial(harmony_then, budget=budget)
                    if engine.speaks_harmony
                    else partial(think_then, room=thinking_room(prompt, markers), budget=budget, markers=markers)
                )
                thinking_grammar = engine.thinking_grammar(sampling, compose)
            grammar_first = grammar_first and thinking_grammar is None
            if engine.speaks_harmony:
                thoughts = HarmonyReader(calls=reader.mode == "auto")
            else:
                thoughts = ReasoningReader.for_prompt(prompt, grammar_first, markers)
            reads_reasoning = True
        logprobs: list[TokenLogprob] = []
        buffer = DeltaBuffer(window_s=coalesce_ms / 1000)
        completion_tokens = prompt_tokens = cached_tokens = 0
        finish_reason = None
        # harmony's channels are marked by special tokens, and some models' think blocks
        marked_by_special_tokens = isinstance(thoughts, HarmonyReader) or (
            thoughts is not None and engine.thinks_in_special_tokens
        )
        calls_marked = keeps_special_tokens(request, engine.tool_call_format)
        keep_special = calls_marked or marked_by_special_tokens
        if parsing is not None:  # vLLM's parser may need them, and ferry's reader of calls when it reads them
            keep_special = parsing.keeps_special_tokens or (calls_marked and not parsing.reads_calls)
        keep_special = keep_special or not sampling.skip_special_tokens  # the client's own ask
        if with_token_ids and prompt_ids is None:  # the replies carry them; the engine then need not split it again
            prompt_ids = engine.token_ids(prompt)
        steps = engine.generate(
            request.request_id,
            prompt,
            sampling,
            request.cache_salt,
            keep_special,
            priority,
            thinking_grammar,
            prompt_ids,
        )
        async for step in steps:
            if control.stop_reason is not None:
                break  # closing the stream aborts the request in vLLM, even if the abort raced its start
            prompt_tokens = step.prompt_tokens
            cached_tokens = max(cached_tokens, step.cached_tokens)
            completion_tokens += step.new_tokens
            step_tokens.append(step.token_ids)
            pieces.append(step.text)
            logprobs += step.logprobs
            prompt_logprobs = step.prompt_logprobs or prompt_logprobs
            finish_reason = step.finish_reason or finish_reason
            delta = buffer.add(OutputDelta(step.text, step.new_tokens, step.logprobs, step.token_ids), time.monotonic())
            if screen:
                await screen.pass_delta(delta)  # raises ContentBlocked; may hold the output from this delta on
            await send_readable(delta)
        control.ended_at = time.monotonic()
        if control.stop_reason is not None:
            await _publish_stopped(request, publish, control.stop_reason, sequence)
            return control.stop_reason != "handed_back"
        delta = buffer.take()
        if screen:
            await screen.pass_delta(delta)
        await send_readable(delta)
        if reader.mode != "text" or thoughts is not None or parsing is not None:
            # held text that was not a tag or a call after all, or what vLLM's parser held back to the end
            if parsing is not None:
                rest_reasoning, rest, calls = parsing.finish()
            else:
                rest_reasoning, rest = thoughts.finish() if thoughts is not None else ("", "")
            if parsing is None or not parsing.reads_calls:
                rest = reader.feed(rest) if rest else ""
                if reader.mode != "text":
                    rest += reader.finish(finish_reason or "stop")[0]
                calls = reader.pieces()  # the end of the calls, once known to be the end
            if rest or rest_reasoning or calls or held_tokens.tokens:
                await send_delta(held_tokens._replace(text=rest), calls, rest_reasoning)
        held_delta = None  # what of a streamed output held for review goes out before its final, if released
        if screen and screen.held is not None and request.stream:
            if withheld.tokens or withheld.text or withheld_reasoning:
                held_delta = next_event(withheld, (), withheld_reasoning)
        output, reasoning, reasoning_tokens = "".join(pieces), None, None
        if parsing is not None:
            output_ids = [token for step in step_tokens for token in step]
            reasoning, answer, tool_calls, reported_finish = parsing.whole(output, output_ids, finish_reason or "stop")
            if reads_reasoning:
                steps_seen = list(zip(pieces, step_tokens, strict=True))
                count = partial(engine.tokens_within, steps_seen, keep_special_tokens=keep_special)
                reasoning_tokens = parsing.reasoning_tokens(output, reasoning, count)
            text, output = answer, answer  # the answer, for ferry's reader of calls when vLLM's does not read them
        elif thoughts is not None:
            if isinstance(thoughts, HarmonyReader):
                reasoning, output, spans = HarmonyReader.split_whole(output, thoughts.calls)
            else:
                reasoning, output, spans = ReasoningReader.split_whole(output, prompt, grammar_first, thoughts.markers)
            # from the whole output's tokens, not from the engine's steps: a step may hold several tokens (the engine
            # batches them when its reader lags), so step counts would depend on timing
            steps_seen = list(zip(pieces, step_tokens, strict=True))
            reasoning_tokens = sum(engine.tokens_within(steps_seen, s, keep_special) for s in spans) if reasoning else 0
        if parsing is None or not parsing.reads_calls:
            text, tool_calls, reported_finish = ToolCallReader.read_whole(
                request, output, finish_reason or "stop", engine.tool_call_format
            )
        final: CompletionFinished | None = CompletionFinished(
            request_id=request.request_id,
            sequence=sequence,
            model=request.model,
            text=text,
            tool_calls=tool_calls,
            reasoning=reasoning,
            finish_reason=reported_finish,
            variant=engine.variant,
            logprobs=logprobs if with_logprobs else None,
            prompt_logprobs=prompt_logprobs,
            prompt_text=given_prompt_text,
            token_ids=[token for step in step_tokens for token in step] if with_token_ids else None,
            prompt_token_ids=prompt_ids if with_token_ids else None,
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
                cached_prompt_tokens=cached_tokens,
                reasoning_tokens=reasoning_tokens,
            ),
        )
        if screen:  # None: held for review, the reviewer's decision delivers it
            final = await screen.finish(final, held_delta)
        if final is not None:
            await publish(request, final)
        logger.info(
            "request %s finished: %s, %d+%d tokens", request.request_id, finish_reason, prompt_tokens, completion_tokens
        )
        return True
    except MessageSizeTooLargeError:
        # not retryable: the same request makes the same reply. Only log-probabilities make a reply this large.
        await publish(
            request,
            GenerationFailed(
                request_id=request.request_id,
                sequence=sequence,
                code="invalid_request",
                message="the reply does not fit in a Kafka record (the producer's limit is 1 MiB): it carries the "
                "log-probabilities of every token with their alternatives; ask for fewer alternatives (top_logprobs, "
                "or logprobs on /v1/completions), fewer tokens (max_tokens), or a shorter prompt with echo",
                param="logprobs",
            ),
        )
        logger.info("request %s: its reply is larger than a Kafka record may be", request.request_id)
        return True
    except ContentBlocked as exc:
        await publish(request, exc.failure(sequence))
        logger.info("request %s output blocked: %s", request.request_id, ",".join(exc.categories))
        return True
    except InvalidRequest as exc:  # PromptTooLong, or a parameter vLLM refused
        # a forced call's schema is the tools' parameters: the client's mistake is there, not in a response_format
        param, message = exc.param, str(exc)
        if param == "response_format" and reader.mode in ("required", "named"):
            param, message = "tools", "tools" + message.removeprefix("response_format")
        await publish(
            request,
            GenerationFailed(
                request_id=request.request_id, sequence=sequence, code=exc.code, message=message, param=param
            ),
        )
        return True
    except DependencyUnavailable:  # the output screening could not read the tenant's policy
        await publish(
            request,
            GenerationFailed(
                request_id=request.request_id,
                sequence=sequence,
                code=SCREENING_UNAVAILABLE,
                message="the output could not be screened: the tenant's safety policy is unavailable",
                retryable=True,
            ),
        )
        return True
    except UNWRITABLE_TOPIC_ERRORS:
        raise  # the reply topic takes nothing, not even the failure: the caller dead-letters the request
    except Exception as exc:  # the requester must hear about any failure, whatever it is
        logger.exception("request %s failed", request.request_id)
        await publish(
            request,
            GenerationFailed(
                request_id=request.request_id,
                sequence=sequence,
                code="engine_error",
                message=f"generation failed: {type(exc).__name__}",
                retryable=True,
            ),
        )
        return True
    finally:
        control.ended_at = control.ended_at or time.monotonic()
        if deadline_timer is not None:
            deadline_timer.cancel()


async def _publish_stopped(
    request: CompletionRequested, publish: PublishReply, reason: StopReason, sequence: int
) -> None:
    logger.info("request %s stopped: %s", request.request_id, reason)
    if reason == "handed_back":
        return  # no final event: the record stays uncommitted and another worker generates the request again
    await publish(
        request,
        GenerationFailed(
            request_id=request.request_id, sequence=sequence, code=reason, message=_STOPPED_MESSAGES[reason]
        ),
    )


def _abort_at_deadline(
    engine: Engine, request: CompletionRequested, control: RequestControl
) -> asyncio.TimerHandle | None:
    if request.deadline_at is None:
        return None
    loop = asyncio.get_running_loop()

    def expire() -> None:
        if control.stop("deadline_exceeded"):
            # the task is referenced by the loop until it ends; the request's stream then ends with an abort step
            asyncio.ensure_future(engine.abort(request.request_id))

    return loop.call_later(max(0.0, (request.deadline_at - utc_now()).total_seconds()), expire)
