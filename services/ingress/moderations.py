"""OpenAI's moderation API (POST /v1/moderations) on the platform's own safety stage: the schemas and the mapping of
the stage's judgement (ModerationCompleted) onto OpenAI's result. Pure.

The texts are judged as prompts are, by the same classifiers and the tenant's own prompt policy, so a text flagged
here is one the platform would escalate or refuse as a prompt. OpenAI's categories that the stage does not screen
(harassment, sexual, and the subcategories) are in the result as null, neither true nor false: nothing judged them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from services.ingress.protocol import STRICT_INPUT, TextPart
from shared.contracts import MODERATION_MAX_INPUTS, ModerationResult

MODERATION_MODEL = "ferry-screening"

OPENAI_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
"""The categories of OpenAI's omni-moderation model, each in every result (its SDKs read them all)."""

OPENAI_NAME = {"hate": "hate", "illegal": "illicit", "self_harm": "self-harm", "violence": "violence"}
"""The safety stage's categories that are OpenAI's under another name; its others (injection, pii, secrets, deny_list)
keep their own names, after OpenAI's."""


def _input_form(value: Any) -> str | None:
    """Which form ``input`` has, read from its first item, so that an error names the fault in that form alone."""
    if isinstance(value, str):
        return "text"
    if not isinstance(value, list):
        return None
    return "parts" if value and isinstance(value[0], dict) else "texts"


ModerationInput = Annotated[
    Annotated[str, Tag("text")]
    | Annotated[list[str], Field(min_length=1, max_length=MODERATION_MAX_INPUTS), Tag("texts")]
    | Annotated[list[TextPart], Field(min_length=1, max_length=MODERATION_MAX_INPUTS), Tag("parts")],
    Discriminator(
        _input_form,
        custom_error_type="input_form",
        custom_error_message="Input should be a string, or an array of strings or of text parts",
    ),
]


class ModerationRequest(BaseModel):
    """The body of POST /v1/moderations."""

    model_config = STRICT_INPUT | ConfigDict(extra="ignore")

    input: ModerationInput = Field(
        description=f"A text, or up to {MODERATION_MAX_INPUTS} texts (strings, or text parts as OpenAI's multi-modal "
        "form has them; images are not served), each judged on its own. The texts may hold 32,000 characters in all."
    )
    model: Literal["ferry-screening"] | None = Field(
        None, description="The platform's moderation model: its safety stage's classifiers. Leave it out or name it."
    )

    def texts(self) -> list[str]:
        if isinstance(self.input, str):
            return [self.input]
        return [part if isinstance(part, str) else part.text for part in self.input]


class ModerationResultOut(BaseModel):
    flagged: bool = Field(description="Whether the tenant's prompt policy would escalate or refuse this text.")
    categories: dict[str, bool | None] = Field(
        description="Per category, whether the text crossed one of the policy's thresholds; null for OpenAI's "
        "categories the platform does not screen."
    )
    category_scores: dict[str, float | None] = Field(
        description="Per category, the score in [0, 1] (the highest any classifier gave); null where not screened."
    )
    category_applied_input_types: dict[str, list[Literal["text"]]] = Field(
        description="Per category, the kinds of input it was judged on: text, or none where not screened."
    )
    action: Literal["allow", "release", "hold", "block"] = Field(
        description="ferry: what the tenant's policy would do with this text as a prompt (allow, release then "
        "review, hold for review, block)."
    )


class ModerationResponse(BaseModel):
    id: str
    model: str = Field(description="Always ferry-screening.")
    results: list[ModerationResultOut] = Field(description="One per input text, in order.")


def moderation_result(result: ModerationResult) -> ModerationResultOut:
    """The safety stage's judgement of one text in OpenAI's form (see the module's docstring)."""
    screened = {OPENAI_NAME.get(c, c): score for c, score in result.scores.items()}
    crossed = {OPENAI_NAME.get(c, c) for c in result.categories}
    names = [*OPENAI_CATEGORIES, *sorted((screened.keys() | crossed) - set(OPENAI_CATEGORIES))]
    judged = screened.keys() | crossed
    return ModerationResultOut(
        flagged=result.flagged,
        categories={name: (name in crossed) if name in judged else None for name in names},
        category_scores={name: screened.get(name) for name in names},
        category_applied_input_types={name: ["text"] if name in judged else [] for name in names},
        action=result.action,
    )
