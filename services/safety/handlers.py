"""Kafka edge of the safety service.

- ``on_requests``: the prompt screening stage. Reads every model's request topic (group ``safety``), screens each
  prompt, and per the tenant's policy forwards it to ``<prefix>screened.<model>`` (allow; release-then-review also
  flags it), keeps it back for a reviewer (hold: flagged with the request), or refuses it (block: GenerationFailed
  ``content_blocked`` on the reply topic, and flagged so a reviewer can label it). Offsets are committed after the
  poll's messages are published.
- ``on_flagged``: persists ContentFlagged (from this stage and from workers' output screening) in the review queue.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from opentelemetry import trace

from services.safety.config import SafetySettings
from services.safety.policy import decide
from services.safety.review import blocked_failure
from services.safety.screening import Screener, Screening, prompt_text
from services.safety.store import PolicyStore, ReviewStore
from shared.contracts import CompletionRequested, ContentFlagged
from shared.kafka import Rejected, dead_letter, decode, publish_message, record_headers
from shared.settings import CommonSettings
from shared.telemetry import context_from

logger = logging.getLogger(__name__)

SERVICE = "safety"


@dataclass(frozen=True)
class SafetyDeps:
    settings: SafetySettings
    common: CommonSettings
    broker: KafkaBroker
    model_by_topic: dict[str, str]
    screener: Screener
    policies: PolicyStore
    reviews: ReviewStore
    tracer: trace.Tracer


def flagged_from(
    request: CompletionRequested, screening: Screening, action: str, categories: list[str]
) -> ContentFlagged:
    text = prompt_text([(m.role, m.content) for m in request.messages], request.prompt)
    return ContentFlagged(
        request_id=request.request_id,
        tenant_id=request.tenant_id,
        model=request.model,
        stage="prompt",
        action=action,  # type: ignore[arg-type]
        categories=categories,
        scores={k: round(v, 4) for k, v in screening.scores.items()},
        snippet=screening.snippet,
        text=text if request.retain_text else None,
        reply_topic=request.reply_topic,
        held_request=request if action == "hold" else None,
    )


def register(deps: SafetyDeps) -> None:
    settings, common, broker = deps.settings, deps.common, deps.broker
    topics = common.topics

    @broker.subscriber(
        *deps.model_by_topic,
        group_id=settings.group_id,
        batch=True,
        max_records=settings.max_batch_size,
        batch_timeout_ms=settings.max_wait_ms,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def on_requests(message: KafkaMessage) -> None:
        accepted: list[CompletionRequested] = []
        for record in message.raw_message:
            try:
                request = decode(CompletionRequested, record)
                if request.model != deps.model_by_topic[record.topic]:
                    raise Rejected(f"model {request.model!r} does not match topic {record.topic!r}")
            except Rejected as exc:
                await dead_letter(broker, common, record, str(exc), SERVICE)
                continue
            if not request.trace_context:
                carried = {k: v for k, v in record_headers(record).items() if k in ("traceparent", "tracestate")}
                request = request.model_copy(update={"trace_context": carried})
            accepted.append(request)
        if not accepted:
            return
        texts = [prompt_text([(m.role, m.content) for m in r.messages], r.prompt) for r in accepted]
        screenings = await deps.screener.screen(texts)
        # every record of the poll goes out at once; the poll is committed only once the broker has confirmed them all
        sent: list[asyncio.Future[Any] | None] = []
        for request, screening in zip(accepted, screenings, strict=True):
            with deps.tracer.start_as_current_span(
                "ferry.safety.screen_prompt",
                context=context_from(request.trace_context),
                attributes={"ferry.request_id": request.request_id},
            ) as span:
                policy = await deps.policies.get(request.tenant_id)
                decision = decide(screening.scores, policy.prompt)
                span.set_attribute("ferry.safety.action", decision.action)
                span.set_attribute("ferry.safety.categories", list(decision.flagged))
                rid = request.request_id
                if decision.action in ("allow", "release"):
                    screened = topics.screened(request.model)
                    sent.append(await publish_message(broker, request, screened, rid, rid, confirm=False))
                if decision.action == "block":
                    failure = blocked_failure(rid, 0, "prompt", decision.categories)
                    sent.append(await publish_message(broker, failure, request.reply_topic, rid, rid, confirm=False))
                if decision.action != "allow":
                    flagged = flagged_from(request, screening, decision.action, list(decision.flagged))
                    sent.append(await publish_message(broker, flagged, topics.safety_flagged, rid, rid, confirm=False))
                    logger.info("request %s prompt %s: %s", rid, decision.action, ",".join(decision.flagged))
        await asyncio.gather(*(f for f in sent if f is not None))

    @broker.subscriber(
        topics.safety_flagged,
        group_id=settings.review_group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def on_flagged(message: KafkaMessage) -> None:
        record = message.raw_message
        try:
            flagged = decode(ContentFlagged, record)  # type: ignore[arg-type]
        except Rejected as exc:
            await dead_letter(broker, common, record, str(exc), SERVICE)  # type: ignore[arg-type]
            return
        policy = await deps.policies.get(flagged.tenant_id)
        item_id = await deps.reviews.add(flagged, policy.review_minutes)
        if item_id is not None:
            logger.info("request %s %s flagged for review as item %d", flagged.request_id, flagged.stage, item_id)
