"""Serving one request on the engine: stream coalesced deltas, then a final event. Never drops a request silently:
every request ends with CompletionFinished or GenerationFailed."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

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


async def serve_request(engine: Engine, request: CompletionRequested, publish: PublishReply, coalesce_ms: int) -> None:
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
    try:
        prompt = engine.render_prompt(request.messages)
        pieces: list[str] = []
        pending_text, pending_tokens = "", 0
        completion_tokens = prompt_tokens = 0
        finish_reason = None
        last_flush = None  # the first delta goes out at once: time to first token is what users feel most
        async for step in engine.generate(request.request_id, prompt, request.sampling):
            prompt_tokens = step.prompt_tokens
            completion_tokens += step.new_tokens
            pieces.append(step.text)
            pending_text += step.text
            pending_tokens += step.new_tokens
            finish_reason = step.finish_reason or finish_reason
            now = time.monotonic()
            due = last_flush is None or (now - last_flush) * 1000 >= coalesce_ms
            if request.stream and pending_text and due and step.finish_reason is None:
                await publish(
                    request,
                    TokensGenerated(
                        request_id=request.request_id,
                        sequence=sequence,
                        text=pending_text,
                        token_count=pending_tokens,
                    ),
                )
                sequence += 1
                pending_text, pending_tokens, last_flush = "", 0, now
        if request.stream and pending_text:
            await publish(
                request,
                TokensGenerated(
                    request_id=request.request_id,
                    sequence=sequence,
                    text=pending_text,
                    token_count=pending_tokens,
                ),
            )
            sequence += 1
        await publish(
            request,
            CompletionFinished(
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
            ),
        )
        logger.info(
            "request %s finished: %s, %d+%d tokens", request.request_id, finish_reason, prompt_tokens, completion_tokens
        )
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
