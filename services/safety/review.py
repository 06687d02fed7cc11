"""Review decisions, as pure functions: what a reviewer may see of an item, and what a decision sends where."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from services.safety import rules
from services.safety.policy import Action
from shared.contracts import (
    CompletionFinished,
    CompletionRequested,
    GenerationFailed,
    Message,
    PromptCleared,
    RequestCancelled,
    TokensGenerated,
)
from shared.topics import Topics

Verdict = Literal["approve", "reject", "relabel"]
CONTENT_BLOCKED = "content_blocked"


def blocked_failure(
    request_id: str, sequence: int, stage: str, categories: list[str] | tuple[str, ...]
) -> GenerationFailed:
    what = "prompt" if stage == "prompt" else "output"
    return GenerationFailed(
        request_id=request_id,
        sequence=sequence,
        code=CONTENT_BLOCKED,
        message=f"the {what} was blocked by the content policy (category: {', '.join(categories) or 'unspecified'})",
    )


SCREENING_UNAVAILABLE = "screening_unavailable"


def unscreened(request: CompletionRequested, topics: Topics) -> list[tuple[Message, str]]:
    """What the stage sends for a prompt it cannot judge (the tenant's policy cannot be read): a retryable failure to
    the requester, and a cancel of the generation already under way for a prompt screened beside it."""
    rid = request.request_id
    failure = GenerationFailed(
        request_id=rid,
        sequence=0,
        code=SCREENING_UNAVAILABLE,
        message="the prompt could not be screened: the tenant's safety policy is unavailable; try again shortly",
        retryable=True,
    )
    sends: list[tuple[Message, str]] = [(failure, request.reply_topic)]
    if request.prompt_screening == "beside":
        sends.append((RequestCancelled(request_id=rid, model=request.model, reason="requested"), topics.cancellations))
    return sends


def prompt_verdict(
    request: CompletionRequested, action: Action, categories: list[str] | tuple[str, ...], topics: Topics
) -> list[tuple[Message, str]]:
    """What the stage's decision on a prompt sends, and to which topic (flagging it for review aside). allow and
    release forward it to generation, block refuses it to the requester, hold sends nothing until a reviewer decides.
    A request already sent to generation by its producer (screened beside generation) is cleared instead of
    forwarded, and a block also cancels its generation."""
    beside = request.prompt_screening == "beside"
    rid = request.request_id
    if action in ("allow", "release"):
        if beside:
            return [(PromptCleared(request_id=rid, by="screening"), request.reply_topic)]
        return [(request, topics.screened(request.model))]
    if action == "block":
        refused: list[tuple[Message, str]] = [(blocked_failure(rid, 0, "prompt", categories), request.reply_topic)]
        if beside:  # the requester has its answer; stop the work under way
            cancel = RequestCancelled(request_id=rid, model=request.model, reason="requested")
            refused.append((cancel, topics.cancellations))
        return refused
    return []


def visible_text(snippet: str, text: str | None, can_unmask: bool) -> tuple[str, bool]:
    """What a reviewer sees, and whether it is masked. Without retained text (the tenant did not set retain_text) every
    reviewer sees the masked snippet only; with it, reviewers holding the unmask privilege see the text as written."""
    if text is None:
        return snippet, True
    if can_unmask:
        return text, False
    return rules.redact(text, rules.find(text)), True


def releases(verdict: Verdict, labels: list[str]) -> bool:
    """approve releases; reject withholds; relabel releases only when the reviewer left no category on the item."""
    return verdict == "approve" or (verdict == "relabel" and not labels)


def label_of(verdict: Verdict, chosen: list[str], flagged: list[str]) -> list[str]:
    """The categories a decision says apply (the exported label): none on approve, the flagged ones on reject, the
    reviewer's choice on relabel."""
    if verdict == "approve":
        return []
    if verdict == "reject":
        return flagged
    return chosen


@dataclass(frozen=True)
class Delivery:
    """One message a decision sends: to ``topic`` (None: the model's screened topic) keyed by the request id."""

    message: Message
    reply: bool


def deliveries(
    stage: str,
    held_request: CompletionRequested | None,
    held_completion: CompletionFinished | None,
    held_delta: TokensGenerated | None,
    request_id: str,
    verdict: Verdict,
    labels: list[str],
    categories: list[str],
) -> list[Delivery]:
    """A held prompt is forwarded to generation on release (or, when it was generated beside its screening, cleared
    to its requester), or refused to the requester; a held output is delivered or replaced with a failure. Items that
    were not held (released or blocked already) send nothing."""
    if held_request is None and held_completion is None:
        return []
    release = releases(verdict, labels)
    if held_request is not None:
        if release and held_request.prompt_screening == "beside":
            return [Delivery(PromptCleared(request_id=request_id, by="review"), reply=True)]
        if release:
            return [Delivery(held_request, reply=False)]
        return [Delivery(blocked_failure(request_id, 0, stage, labels or categories), reply=True)]
    assert held_completion is not None
    if release:
        return [Delivery(m, reply=True) for m in (held_delta, held_completion) if m is not None]
    sequence = held_delta.sequence if held_delta is not None else held_completion.sequence
    return [Delivery(blocked_failure(request_id, sequence, stage, labels or categories), reply=True)]


Held = tuple[CompletionRequested | None, CompletionFinished | None, TokensGenerated | None]


def held_messages(held: dict[str, Any] | None) -> Held:
    """A review item's stored held content as messages: the held request, or the held final event and delta."""
    held = held or {}
    return (
        CompletionRequested.model_validate(held["request"]) if held.get("request") else None,
        CompletionFinished.model_validate(held["completion"]) if held.get("completion") else None,
        TokensGenerated.model_validate(held["delta"]) if held.get("delta") else None,
    )


def expiry_deliveries(stage: str, held: Held, request_id: str, on_expiry: str, categories: list[str]) -> list[Delivery]:
    """What a held item nobody decided by its deadline sends: delivered as if approved (release), or a
    content_blocked failure that says the review deadline passed (withhold)."""
    request, completion, delta = held
    if request is None and completion is None:
        return []
    if on_expiry == "release":
        return deliveries(stage, request, completion, delta, request_id, "approve", [], categories)
    what = "prompt" if stage == "prompt" else "output"
    sequence = 0 if request is not None else (delta.sequence if delta is not None else completion.sequence)  # type: ignore[union-attr]
    failure = GenerationFailed(
        request_id=request_id,
        sequence=sequence,
        code=CONTENT_BLOCKED,
        message=f"the {what} was held for human review (category: {', '.join(categories) or 'unspecified'}) and no "
        "reviewer decided before the review deadline; it is withheld by the content policy",
    )
    return [Delivery(failure, reply=True)]
