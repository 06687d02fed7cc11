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


def unscreened(
    request: CompletionRequested, topics: Topics, why: str = "the tenant's safety policy is unavailable"
) -> list[tuple[Message, str]]:
    """What the stage sends for a prompt it cannot judge (the tenant's policy cannot be read, or the tokenizer of a
    prompt given as token ids): a retryable failure to the requester, and a cancel of the generation already under
    way for a prompt screened beside it."""
    return refused(request, screening_failed(request.request_id, "the prompt", why), topics)


def screening_failed(request_id: str, what: str, why: str) -> GenerationFailed:
    """The retryable failure of a request whose text (``what``) the stage cannot judge now."""
    return GenerationFailed(
        request_id=request_id,
        sequence=0,
        code=SCREENING_UNAVAILABLE,
        message=f"{what} could not be screened: {why}; try again shortly",
        retryable=True,
    )


def refused(request: CompletionRequested, failure: GenerationFailed, topics: Topics) -> list[tuple[Message, str]]:
    """What the stage sends for a prompt it refuses before judging it: ``failure`` to the requester, and a cancel of
    the generation already under way for a prompt screened beside it."""
    sends: list[tuple[Message, str]] = [(failure, request.reply_topic)]
    if request.prompt_screening == "beside":
        cancel = RequestCancelled(request_id=request.request_id, model=request.model, reason="requested")
        sends.append((cancel, topics.cancellations))
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
    """One message a decision sends: to the request's reply topic (``reply``) or to the model's screened topic, keyed
    by ``key``, the id of the request it is about."""

    message: Message
    reply: bool
    key: str


# A review item's held content: the held prompt's requests (one, or each choice of a request with n > 1 that joined
# the item), or a held output's final event and the delta its client has not seen
Held = tuple[tuple[CompletionRequested, ...], CompletionFinished | None, TokensGenerated | None]


def deliveries(
    stage: str, held: Held, request_id: str, verdict: Verdict, labels: list[str], categories: list[str]
) -> list[Delivery]:
    """A held prompt is forwarded to generation on release (or, when it was generated beside its screening, cleared
    to its requester), or refused to the requester, for each request held with it; a held output is delivered or
    replaced with a failure. Items that were not held (released or blocked already) send nothing."""
    requests, completion, delta = held
    release = releases(verdict, labels)
    if requests:
        return [_prompt_delivery(r, release, stage, labels or categories) for r in requests]
    if completion is None:
        return []
    if release:
        return [Delivery(m, reply=True, key=request_id) for m in (delta, completion) if m is not None]
    sequence = delta.sequence if delta is not None else completion.sequence
    return [Delivery(blocked_failure(request_id, sequence, stage, labels or categories), reply=True, key=request_id)]


def _prompt_delivery(request: CompletionRequested, release: bool, stage: str, categories: list[str]) -> Delivery:
    rid = request.request_id
    if not release:
        return Delivery(blocked_failure(rid, 0, stage, categories), reply=True, key=rid)
    if request.prompt_screening == "beside":
        return Delivery(PromptCleared(request_id=rid, by="review"), reply=True, key=rid)
    return Delivery(request, reply=False, key=rid)


def held_messages(held: dict[str, Any] | None) -> Held:
    """A review item's stored held content as messages: the held requests (``request``: an item stored before items
    held several), or the held final event and delta."""
    held = held or {}
    requests = held.get("requests") or ([held["request"]] if held.get("request") else [])
    return (
        tuple(CompletionRequested.model_validate(r) for r in requests),
        CompletionFinished.model_validate(held["completion"]) if held.get("completion") else None,
        TokensGenerated.model_validate(held["delta"]) if held.get("delta") else None,
    )


def expiry_deliveries(stage: str, held: Held, request_id: str, on_expiry: str, categories: list[str]) -> list[Delivery]:
    """What a held item nobody decided by its deadline sends: delivered as if approved (release), or a
    content_blocked failure that says the review deadline passed (withhold), for each request held with it."""
    requests, completion, delta = held
    if not requests and completion is None:
        return []
    if on_expiry == "release":
        return deliveries(stage, held, request_id, "approve", [], categories)
    what = "prompt" if stage == "prompt" else "output"
    message = (
        f"the {what} was held for human review (category: {', '.join(categories) or 'unspecified'}) and no "
        "reviewer decided before the review deadline; it is withheld by the content policy"
    )
    if requests:
        failed = [(r.request_id, 0) for r in requests]
    else:
        assert completion is not None
        failed = [(request_id, delta.sequence if delta is not None else completion.sequence)]
    return [
        Delivery(
            GenerationFailed(request_id=rid, sequence=sequence, code=CONTENT_BLOCKED, message=message),
            reply=True,
            key=rid,
        )
        for rid, sequence in failed
    ]


def late_choice_deliveries(item: dict[str, Any], request: CompletionRequested, on_expiry: str) -> list[Delivery]:
    """What a held choice gets when it joins the item of its request's other choices after that item was settled:
    the reviewer's decision (``status`` decided), or the tenant policy's ``on_expiry`` (expired)."""
    held: Held = ((request,), None, None)
    categories = list(item["categories"])
    if item["status"] == "decided":
        return deliveries("prompt", held, request.request_id, item["decision"], list(item["labels"] or []), categories)
    return expiry_deliveries("prompt", held, request.request_id, on_expiry, categories)
