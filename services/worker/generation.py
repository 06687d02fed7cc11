"""Serving one request on the engine: stream coalesced deltas, then a final event. Never drops a request silently:
every request ends with CompletionFinished or GenerationFailed."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.safety.output import ContentBlocked, OutputGuard
from services.worker.engine import Engine, PromptTooLong
from shared.contracts import (
    CompletionFinished,
    CompletionRequested,
    GenerationFailed,
    Message,
    TokensGenerated,
    Usage,
    utc_now,
)

logger = logging.getLogger(__name__)

PublishReply = Callable[[CompletionRequested, Message], Awaitable[None]]


@dataclass
class DeltaBuffer:
    """Gathers engine steps into deltas so Kafka carries few records without visible delay: the first delta goes out at
    once (time to first token is what users feel most), later ones at most every ``window_s``."""

    window_s: float
    text: str = ""
    tokens: int = 0
    last_flush: float | None = None

    def add(self, text: str, tokens: int, now: float) -> tuple[str, int] | None:
        """Adds a step; returns the delta to send now, if one is due."""
        self.text += text
        self.tokens += tokens
        due = self.last_flush is None or now - self.last_flush >= self.window_s
        if self.text and due:
            self.last_flush = now
            return self.take()
        return None

    def take(self) -> tuple[str, int] | None:
        """Empties the buffer. Tokens without text (an end-of-sequence token) still count, so the deltas' token
        counts always add up to the completion's."""
        if not self.text and not self.tokens:
            return None
        delta = (self.text, self.tokens)
        self.text, self.tokens = "", 0
        return delta


async def serve_request(
    engine: Engine,
    request: CompletionRequested,
    publish: PublishReply,
    coalesce_ms: int,
    guard: OutputGuard | None = None,
) -> None:
    sequence = 0
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
        return

    async def send_delta(delta: tuple[str, int] | None) -> None:
        nonlocal sequence
        if delta is None or not request.stream:
            return
        text, tokens = delta
        await publish(
            request,
            TokensGenerated(request_id=request.request_id, sequence=sequence, text=text, token_count=tokens),
        )
        sequence += 1

    try:
        screen = await guard.start(request) if guard else None  # output screening (services/safety/output.py)
        prompt = request.prompt if request.prompt is not None else engine.render_prompt(request.messages)
        pieces: list[str] = []
        buffer = DeltaBuffer(window_s=coalesce_ms / 1000)
        completion_tokens = prompt_tokens = 0
        finish_reason = None
        async for step in engine.generate(request.request_id, prompt, request.sampling):
            prompt_tokens = step.prompt_tokens
            completion_tokens += step.new_tokens
            pieces.append(step.text)
            finish_reason = step.finish_reason or finish_reason
            delta = buffer.add(step.text, step.new_tokens, time.monotonic())
            await send_delta(await screen.pass_delta(delta) if screen else delta)
        delta = buffer.take()
        await send_delta(await screen.pass_delta(delta) if screen else delta)
        final: CompletionFinished | None = CompletionFinished(
            request_id=request.request_id,
            sequence=sequence,
            model=request.model,
            text="".join(pieces),
            finish_reason=finish_reason or "stop",
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
        )
        if screen:
            final = await screen.finish(final)  # None: held for review, the reviewer's decision delivers it
        if final is not None:
            await publish(request, final)
        logger.info(
            "request %s finished: %s, %d+%d tokens", request.request_id, finish_reason, prompt_tokens, completion_tokens
        )
    except ContentBlocked as exc:
        await publish(request, exc.failure(sequence))
        logger.info("request %s output blocked: %s", request.request_id, ",".join(exc.categories))
    except PromptTooLong as exc:
        await publish(
            request,
            GenerationFailed(
                request_id=request.request_id,
                sequence=sequence,
                code="context_length_exceeded",
                message=str(exc),
            ),
        )
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
