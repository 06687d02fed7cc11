"""Kafka edge of the safety service.

- ``screen_prompts``: the prompt screening stage, fed by ``consumer.StageConsumer`` (every model's request topic,
  group ``safety``). Screens each prompt, turn by turn (model scores cached per tenant for identical turns, such as a
  system prompt or a resent history; the guard model asked for tenants in its scope), and per the tenant's policy
  forwards it to ``<prefix>screened.<model>`` (allow; release-then-review also flags it), keeps it back for a
  reviewer (hold: flagged with the request), or refuses it (block: GenerationFailed ``content_blocked`` on the reply
  topic, and flagged so a reviewer can label it). A request screened beside generation (its producer sent it to the
  screened topic too) is not forwarded: allow and release answer PromptCleared on the reply topic, and block also
  cancels its generation. The poll is committed once its messages are published.
- ``moderate``: the moderation stage, fed by a second ``consumer.StageConsumer`` (``<prefix>moderations``, group
  ``safety-moderations``): texts screened as prompts are and judged by the tenant's prompt policy, answered with
  ModerationCompleted on the reply topic; nothing forwarded, filed or stored.
- ``on_flagged``: persists ContentFlagged (from this stage and from workers' output screening) in the review queue;
  a choice of a request with n > 1 joins the item of its request's choices (``ReviewStore.add``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import ConsumerRecord
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from opentelemetry import trace

from services.safety.config import SafetySettings
from services.safety.guard import GuardCheck, GuardVerdict
from services.safety.metrics import SafetyMetrics
from services.safety.policy import Decision, decide, escalate
from services.safety.prompt_tokens import ModelTokenizers, NoTokenizer, UndecodablePrompt
from services.safety.review import late_choice_deliveries, prompt_verdict, refused, screening_failed, unscreened
from services.safety.screening import Screener, Screening, combine, prompt_parts, prompt_text
from services.safety.store import PolicyStore, ReviewStore
from services.safety.web import Send, deliver
from shared.contracts import (
    CompletionRequested,
    ContentFlagged,
    GenerationFailed,
    Message,
    ModerationCompleted,
    ModerationRequested,
    ModerationResult,
    utc_now,
)
from shared.kafka import (
    UNWRITABLE_TOPIC_ERRORS,
    Rejected,
    TopicCheck,
    dead_letter,
    dead_letter_unanswerable,
    decode,
    publish_message,
    record_headers,
    requester_of,
)
from shared.outages import DependencyUnavailable
from shared.settings import CommonSettings
from shared.telemetry import context_from

logger = logging.getLogger(__name__)

SERVICE = "safety"
GUARD_UNVERIFIED = "guard_unverified"


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
    metrics: SafetyMetrics
    send: Send  # a decision's message to a topic, keyed by the request it is about
    reply_topic_ready: TopicCheck
    tokenizers: ModelTokenizers  # for prompts given as token ids
    guard: GuardCheck | None = None


def flagged_from(
    request: CompletionRequested, screening: Screening, action: str, categories: list[str], text: str
) -> ContentFlagged:
    """The item a flagged prompt puts before reviewers; ``text``: the prompt as screened (see prompt_text)."""
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
        retention_days=request.retention_days,
        choice_of=request.choice_of,
    )


def guarded(deps: SafetyDeps, tenant_id: str | None) -> bool:
    scope = deps.settings.guard_tenants
    return deps.guard is not None and (scope is None or tenant_id in scope)


async def screen_prompts(deps: SafetyDeps, records: Sequence[ConsumerRecord]) -> None:
    """The stage's work on one poll: decode, screen, decide and publish; raises (so the poll is read again) only when
    publishing fails."""
    broker, common, metrics = deps.broker, deps.common, deps.metrics
    topics = common.topics
    accepted: list[CompletionRequested] = []
    read_from: dict[str, ConsumerRecord] = {}  # each accepted request's record
    refusals: list[tuple[tuple[str, str], Rejected]] = []
    for record in records:
        try:
            request = decode(CompletionRequested, record)
            if request.model != deps.model_by_topic.get(record.topic):
                raise Rejected(f"model {request.model!r} does not match topic {record.topic!r}", "model")
        except Rejected as exc:
            await dead_letter(broker, common, record, str(exc), SERVICE)
            if (requester := requester_of(record)) is not None:
                refusals.append((requester, exc))
            continue
        if not request.trace_context:
            carried = {k: v for k, v in record_headers(record).items() if k in ("traceparent", "tracestate")}
            request = request.model_copy(update={"trace_context": carried})
        accepted.append(request)
        read_from[request.request_id] = record
    await tell_rejected(deps, refusals)
    if not accepted:
        return
    confirmations: list[asyncio.Future[Any] | None] = []

    async def publish(request: CompletionRequested, sends: Sequence[tuple[Message, str]]) -> None:
        rid = request.request_id
        try:
            if any(topic == request.reply_topic for _, topic in sends):
                await deps.reply_topic_ready(request.reply_topic)
            for message, topic in sends:
                confirmations.append(
                    await publish_message(broker, message, topic, key=rid, request_id=rid, confirm=False)
                )
        except UNWRITABLE_TOPIC_ERRORS as exc:  # its reply topic: retrying the poll would stall every request in it
            record = read_from[rid]
            await dead_letter_unanswerable(
                broker, common, request, (record.topic, record.partition, record.offset), exc, SERVICE
            )

    # what is screened of each request: a prompt given as token ids is screened as the text they decode to
    screened_as: list[CompletionRequested] = []
    for request in list(accepted):
        if request.prompt_token_ids is None:
            screened_as.append(request)
            continue
        try:
            text = await deps.tokenizers.text_of(request.model, request.prompt_token_ids)
        except NoTokenizer as exc:
            accepted.remove(request)
            metrics.prompts.labels("unavailable").inc()
            logger.warning("request %s: %s", request.request_id, exc)
            await publish(request, unscreened(request, topics, str(exc)))
            continue
        except UndecodablePrompt as exc:
            accepted.remove(request)
            metrics.prompts.labels("undecodable").inc()
            failure = GenerationFailed(
                request_id=request.request_id, sequence=0, code="invalid_request", message=str(exc), param="prompt"
            )
            await publish(request, refused(request, failure, topics))
            continue
        screened_as.append(request.model_copy(update={"prompt": text, "prompt_token_ids": None}))
    if not accepted:
        await asyncio.gather(*confirmations)
        return
    parts = [prompt_parts(r) for r in screened_as]
    started = time.perf_counter()
    cache = deps.screener.cache
    hits, misses = (cache.hits, cache.misses) if cache is not None else (0, 0)
    screenings = await deps.screener.screen_parts(parts, [r.tenant_id for r in accepted])
    if cache is not None:
        metrics.cache.labels("hit").inc(cache.hits - hits)
        metrics.cache.labels("miss").inc(cache.misses - misses)
        metrics.cache_entries.set(cache.size)
    verdicts = await guard_checked(deps, [r.tenant_id for r in accepted], parts, screenings)
    metrics.screen_seconds.observe(time.perf_counter() - started)
    for i, (request, screening) in enumerate(zip(accepted, screenings, strict=True)):
        with deps.tracer.start_as_current_span(
            "ferry.safety.screen_prompt",
            context=context_from(request.trace_context),
            attributes={"ferry.request_id": request.request_id},
        ) as span:
            rid = request.request_id
            try:
                policy = await deps.policies.get(request.tenant_id, request.screening_policy)
            except DependencyUnavailable:
                # the tenant's policy was never read and the database does not answer: this one request is refused
                # (retryable), rather than judged under a policy that may not be its tenant's or left to stall the poll
                span.set_attribute("ferry.safety.action", "unavailable")
                metrics.prompts.labels("unavailable").inc()
                logger.warning("request %s: tenant %s's policy is unavailable; refused", rid, request.tenant_id)
                await publish(request, unscreened(request, topics))
                continue
            decision = judged(deps, rid, decide(screening.scores, policy.prompt), verdicts.get(i))
            span.set_attribute("ferry.safety.action", decision.action)
            span.set_attribute("ferry.safety.categories", list(decision.flagged))
            metrics.prompts.labels(decision.action).inc()
            sends = prompt_verdict(request, decision.action, decision.categories, topics)
            if decision.action != "allow":
                text = prompt_text(screened_as[i])
                flagged = flagged_from(request, screening, decision.action, list(decision.flagged), text)
                sends.append((flagged, topics.safety_flagged))
                logger.info("request %s prompt %s: %s", rid, decision.action, ",".join(decision.flagged))
            await publish(request, sends)  # inside the span, so each record carries its context to the reader
    # published together, then confirmed together: one round trip to the broker for the whole poll
    await asyncio.gather(*confirmations)
    now_ms = time.time() * 1000
    for request in accepted:
        metrics.stage_seconds.observe(max(0.0, now_ms - read_from[request.request_id].timestamp) / 1000)


async def tell_rejected(deps: SafetyDeps, refusals: Sequence[tuple[tuple[str, str], Rejected]]) -> None:
    """Tells the requesters of records that could not be used why (their records are dead-lettered)."""
    for (rid, reply_topic), rejected in refusals:
        failure = GenerationFailed(
            request_id=rid, sequence=0, code="invalid_request", message=str(rejected), param=rejected.param
        )
        try:
            await deps.send(failure, reply_topic, rid)
        except UNWRITABLE_TOPIC_ERRORS:
            logger.warning("request %s: rejected, and its reply topic cannot be written to say so", rid)


async def guard_checked(
    deps: SafetyDeps, tenants: Sequence[str | None], parts: Sequence[Sequence[str]], screenings: list[Screening]
) -> dict[int, GuardVerdict]:
    """Asks the guard model about each item (its ``parts`` joined) whose tenant is in its scope, and adds what it
    named to the item's screening; the verdicts by item."""
    verdicts: dict[int, GuardVerdict] = {}
    if deps.guard is None:
        return verdicts
    ask = [i for i, tenant in enumerate(tenants) if guarded(deps, tenant)]
    if ask:
        texts = ["\n".join(parts[i]) for i in ask]
        for i, verdict in zip(ask, await deps.guard.check(texts), strict=True):
            verdicts[i] = verdict
            if verdict.scores:
                screenings[i] = with_scores(screenings[i], "guard_model", verdict.scores)
    return verdicts


def judged(deps: SafetyDeps, request_id: str, decision: Decision, verdict: GuardVerdict | None) -> Decision:
    """The policy's decision, escalated by the configured fallback when the guard model gave no usable verdict."""
    if verdict is None:
        return decision
    fallback = deps.settings.guard_fallback if verdict.needs_fallback else "none"
    if verdict.needs_fallback:
        decision = escalate(decision, deps.settings.guard_fallback, GUARD_UNVERIFIED)
    deps.metrics.guard.labels(verdict.outcome, fallback).inc()
    trace.get_current_span().set_attribute("ferry.safety.guard", verdict.outcome)
    logger.info("request %s guard model: %s (fallback %s)", request_id, verdict.outcome, fallback)
    return decision


async def moderate(deps: SafetyDeps, records: Sequence[ConsumerRecord]) -> None:
    """The moderation stage's work on one poll of ``<prefix>moderations``: each request's texts are screened as
    prompts are (rules, classifiers, the guard model in its scope) and judged by the tenant's prompt policy; the
    answer is a ModerationCompleted on the reply topic. Nothing is filed for review or forwarded: the requester
    decides what to do with the text."""
    broker, common, metrics = deps.broker, deps.common, deps.metrics
    accepted: list[tuple[ModerationRequested, ConsumerRecord]] = []
    refusals: list[tuple[tuple[str, str], Rejected]] = []
    for record in records:
        try:
            request = decode(ModerationRequested, record)
        except Rejected as exc:
            await dead_letter(broker, common, record, str(exc), SERVICE)
            if (requester := requester_of(record)) is not None:
                refusals.append((requester, exc))
            continue
        if request.deadline_at is not None and request.deadline_at <= utc_now():
            metrics.moderations.labels("expired").inc()  # its requester stopped waiting: nobody reads an answer
            continue
        accepted.append((request, record))
    await tell_rejected(deps, refusals)
    if not accepted:
        return
    # every text of the poll screened together, each on its own (one part); the requests' results are then in order
    parts = [[text] for request, _ in accepted for text in request.inputs]
    tenants = [request.tenant_id for request, _ in accepted for _ in request.inputs]
    screenings = await deps.screener.screen_parts(parts, tenants)
    verdicts = await guard_checked(deps, tenants, parts, screenings)
    start = 0
    for request, record in accepted:
        rid, count = request.request_id, len(request.inputs)
        with deps.tracer.start_as_current_span(
            "ferry.safety.moderation",
            context=context_from(request.trace_context or record_headers(record)),
            attributes={"ferry.request_id": rid, "ferry.safety.inputs": count},
        ):
            answer: Message
            try:
                policy = await deps.policies.get(request.tenant_id, request.screening_policy)
            except DependencyUnavailable:
                metrics.moderations.labels("unavailable").inc()
                logger.warning("moderation %s: tenant %s's policy is unavailable", rid, request.tenant_id)
                answer = screening_failed(rid, "the texts", "the tenant's safety policy is unavailable")
            else:
                results = []
                for k in range(start, start + count):
                    decision = judged(deps, rid, decide(screenings[k].scores, policy.prompt), verdicts.get(k))
                    results.append(
                        ModerationResult(
                            flagged=decision.action != "allow",
                            action=decision.action,
                            categories=list(decision.flagged),
                            scores={c: round(v, 4) for c, v in screenings[k].scores.items()},
                        )
                    )
                metrics.moderations.labels("flagged" if any(r.flagged for r in results) else "allowed").inc()
                answer = ModerationCompleted(request_id=rid, results=results)
            start += count
            try:
                await deps.send(answer, request.reply_topic, rid)
            except UNWRITABLE_TOPIC_ERRORS as exc:
                source = (record.topic, record.partition, record.offset)
                await dead_letter_unanswerable(broker, common, request, source, exc, SERVICE)


def with_scores(screening: Screening, name: str, scores: dict[str, float]) -> Screening:
    by = screening.by_classifier | {name: scores}
    return Screening(combine(by), by, screening.snippet, screening.redacted)


def register(deps: SafetyDeps) -> None:
    """The review-queue subscriber (the prompt stage has its own consumer, see consumer.py)."""
    settings, common, broker = deps.settings, deps.common, deps.broker
    topics = common.topics

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

        async def settle(item: dict[str, Any]) -> None:
            """A held choice that joined its request's item after a reviewer (or the deadline) settled it."""
            assert flagged.held_request is not None  # only held choices are settled late
            sends = late_choice_deliveries(item, flagged.held_request, policy.on_review_expiry)
            await deliver(deps.send, sends, flagged.reply_topic, topics.screened(flagged.model))

        filed = await deps.reviews.add(flagged, policy.review_minutes, settle)
        if filed.new:
            logger.info("request %s %s flagged for review as item %d", flagged.request_id, flagged.stage, filed.item_id)
        elif filed.item_id is not None:
            logger.info(
                "request %s (a choice of %s) joined review item %d%s",
                flagged.request_id,
                flagged.choice_of,
                filed.item_id,
                ", settled already: given its outcome" if filed.settled else "",
            )
