"""The optional guard-model check: asks a model served by this platform itself, through the platform's own request
path, whether a prompt is unsafe (a Llama Guard-style question, see classifiers.GUARD_PROMPT).

Each check is a CompletionRequested (greedy, a few tokens, not streamed) published to ``<prefix>screened.<guard
model>``, so the batcher and a worker serve it like any request; it skips the screening stage, which would otherwise
screen (and guard-check) its own question forever. The answer comes back on this instance's reply topic
``<prefix>replies.safety-<instance>``. An answer that cannot be read, a failure or no answer within the timeout is an
outcome of its own; the stage then applies the configured fallback (see ``policy.escalate``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from services.safety.classifiers import GUARD_PROMPT, parse_guard_answer
from shared.contracts import (
    ChatMessage,
    CompletionFinished,
    CompletionRequested,
    GenerationFailed,
    SamplingParams,
    reply_event_adapter,
    utc_now,
)
from shared.kafka import tail
from shared.settings import CommonSettings

logger = logging.getLogger(__name__)

Outcome = Literal["safe", "unsafe", "unreadable", "failed", "timeout"]
FALLBACK_OUTCOMES = ("unreadable", "failed", "timeout")
GUARD_TENANT = "ferry-safety-guard"


@dataclass(frozen=True)
class GuardVerdict:
    outcome: Outcome
    scores: dict[str, float] = field(default_factory=dict)
    """Score 1.0 per category the guard named (outcome unsafe); empty otherwise."""

    @property
    def needs_fallback(self) -> bool:
        return self.outcome in FALLBACK_OUTCOMES


def verdict_of(answer: CompletionFinished | GenerationFailed | None) -> GuardVerdict:
    """Pure: a reply (None: none in time) -> the verdict."""
    if answer is None:
        return GuardVerdict("timeout")
    if isinstance(answer, GenerationFailed):
        return GuardVerdict("failed")
    scores = parse_guard_answer(answer.text)
    if scores is None:
        return GuardVerdict("unreadable")
    return GuardVerdict("unsafe" if scores else "safe", scores)


Publish = Callable[[CompletionRequested, str], Awaitable[None]]


class GuardCheck:
    """Asks the guard model about prompts and waits for the answers on its own reply topic."""

    def __init__(
        self,
        common: CommonSettings,
        model: str,
        instance_id: str,
        publish: Publish,
        timeout_s: float = 5.0,
        max_tokens: int = 16,
    ) -> None:
        self._common, self.model, self._publish = common, model, publish
        self._timeout, self._max_tokens = timeout_s, max_tokens
        self.reply_topic = common.topics.replies(f"safety-{instance_id}")
        self._waiting: dict[str, asyncio.Future[CompletionFinished | GenerationFailed]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Reads the reply topic from its end, positioned before the first question is asked."""
        consumer = await tail(self._common, self.reply_topic, "ferry-safety-guard")
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="guard-replies")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer:
            await self._consumer.stop()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def check(self, texts: Sequence[str]) -> list[GuardVerdict]:
        """One question per text, all asked at once; each waits at most the timeout."""
        return list(await asyncio.gather(*(self._one(t) for t in texts)))

    async def _one(self, text: str) -> GuardVerdict:
        request_id = f"guard-{uuid.uuid4().hex}"
        future: asyncio.Future[CompletionFinished | GenerationFailed] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        question = CompletionRequested(
            request_id=request_id,
            model=self.model,
            messages=[ChatMessage(role="user", content=GUARD_PROMPT.format(text=text))],
            sampling=SamplingParams(max_tokens=self._max_tokens, temperature=0),
            stream=False,
            reply_topic=self.reply_topic,
            tenant_id=GUARD_TENANT,
            deadline_at=utc_now() + timedelta(seconds=self._timeout),
        )
        try:
            await self._publish(question, self._common.topics.screened(self.model))
            answer = await asyncio.wait_for(future, self._timeout)
        except TimeoutError:
            return verdict_of(None)
        except Exception:
            logger.exception("guard question %s could not be asked", request_id)
            return GuardVerdict("failed")
        finally:
            self._waiting.pop(request_id, None)
        return verdict_of(answer)

    async def _run(self) -> None:
        assert self._consumer is not None
        async for record in self._consumer:
            try:
                event = reply_event_adapter.validate_json(record.value or b"")
            except ValidationError:
                logger.warning("unreadable record on %s@%d ignored", record.topic, record.offset)
                continue
            future = self._waiting.get(event.request_id)
            if future is not None and not future.done() and isinstance(event, CompletionFinished | GenerationFailed):
                future.set_result(event)
