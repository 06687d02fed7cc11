"""Per-tenant policy: which score, per category, allows, escalates (hold or release-then-review) or blocks. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Action = Literal["allow", "release", "hold", "block"]
_RANK: dict[str, int] = {"allow": 0, "release": 1, "hold": 2, "block": 3}


class CategoryRule(BaseModel):
    """Thresholds of one category; a score at or above ``block_at`` blocks, at or above ``escalate_at`` escalates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    block_at: float | None = Field(None, ge=0, le=1, description="Score from which content is refused; None: never.")
    escalate_at: float | None = Field(None, ge=0, le=1, description="Score from which a person reviews it.")
    escalate: Literal["hold", "release"] = Field(
        "hold", description="hold: deliver only after approval; release: deliver now, review afterwards."
    )


class Policy(BaseModel):
    """A tenant's policy. Categories it does not name are allowed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: dict[str, CategoryRule] = Field(description="Rules applied to prompts, per category.")
    output: dict[str, CategoryRule] = Field(description="Rules applied to generated outputs, per category.")
    review_minutes: int = Field(60, ge=1, description="Time a reviewer has to decide an escalated item.")
    on_review_expiry: Literal["withhold", "release"] = Field(
        "withhold",
        description="What happens to held content nobody decided by its deadline: withhold (the requester gets "
        "content_blocked saying why) or release (delivered, as if approved).",
    )


# The default escalates by release-then-review: a false positive must not keep a requester waiting on a person
# (random text scores 0.3-0.4 on some harm class). Tenants opt in to holding with their own policy.
_HARM = CategoryRule(block_at=0.7, escalate_at=0.35, escalate="release")
DEFAULT_POLICY = Policy(
    prompt={
        "secrets": CategoryRule(block_at=0.5),
        "deny_list": CategoryRule(block_at=0.5),
        "pii": CategoryRule(escalate_at=0.5, escalate="release"),
        "injection": CategoryRule(block_at=0.9, escalate_at=0.7, escalate="release"),
        "violence": _HARM,
        "self_harm": CategoryRule(block_at=0.7, escalate_at=0.3, escalate="release"),
        "hate": _HARM,
        "illegal": _HARM,
    },
    output={
        "secrets": CategoryRule(block_at=0.5),
        "deny_list": CategoryRule(block_at=0.5),
        "pii": CategoryRule(escalate_at=0.5, escalate="release"),
        "violence": _HARM,
        "self_harm": _HARM,
        "hate": _HARM,
        "illegal": _HARM,
    },
)


@dataclass(frozen=True)
class Decision:
    action: Action
    categories: tuple[str, ...]
    """The categories that caused the action (those at the decisive level)."""
    flagged: tuple[str, ...]
    """Every category that crossed a threshold."""


def decide(scores: dict[str, float], rules: dict[str, CategoryRule]) -> Decision:
    """The strictest action any category calls for: block > hold > release > allow."""
    per_category: dict[str, Action] = {}
    for category, rule in rules.items():
        score = scores.get(category, 0.0)
        if rule.block_at is not None and score >= rule.block_at:
            per_category[category] = "block"
        elif rule.escalate_at is not None and score >= rule.escalate_at:
            per_category[category] = rule.escalate
    if not per_category:
        return Decision("allow", (), ())
    action = max(per_category.values(), key=_RANK.__getitem__)
    decisive = tuple(sorted(c for c, a in per_category.items() if a == action))
    return Decision(action, decisive, tuple(sorted(per_category)))


def priority(scores: dict[str, float], action: Action) -> int:
    """Review priority, 0 (low) to 100: held items first (someone waits), then by the highest score."""
    top = max(scores.values(), default=0.0)
    return min(100, int(top * 50) + (50 if action == "hold" else 0))


def escalate(decision: Decision, action: Action, category: str) -> Decision:
    """``decision`` raised to at least ``action`` because of ``category`` (e.g. the guard model's fallback)."""
    flagged = tuple(sorted({*decision.flagged, category}))
    if action == "allow":
        return decision
    if _RANK[action] > _RANK[decision.action]:
        return Decision(action, (category,), flagged)
    if action == decision.action:
        return Decision(action, tuple(sorted({*decision.categories, category})), flagged)
    return Decision(decision.action, decision.categories, flagged)
