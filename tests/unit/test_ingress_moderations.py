"""The safety stage's judgement of a text in OpenAI's moderation shape, and what a moderation request may hold."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.ingress.moderations import OPENAI_CATEGORIES, ModerationRequest, moderation_result
from shared.contracts import ModerationRequested, ModerationResult

SCREENED = {"violence": 0.81, "hate": 0.1, "illegal": 0.2, "self_harm": 0.05, "injection": 0.01, "pii": 1.0}


def test_categories_the_stage_screens_take_openais_names_and_the_rest_are_null() -> None:
    result = moderation_result(
        ModerationResult(flagged=True, action="block", categories=["pii", "violence"], scores=SCREENED)
    )

    assert result.flagged and result.action == "block"
    assert list(result.categories)[: len(OPENAI_CATEGORIES)] == list(OPENAI_CATEGORIES)  # every one, in OpenAI's order
    assert result.categories["violence"] is True and result.category_scores["violence"] == 0.81
    assert result.categories["illicit"] is False and result.category_scores["illicit"] == 0.2
    assert result.categories["self-harm"] is False and result.category_scores["self-harm"] == 0.05
    assert result.categories["sexual"] is None and result.category_scores["harassment/threatening"] is None
    assert result.category_applied_input_types["sexual"] == []
    assert result.category_applied_input_types["hate"] == ["text"]
    # the stage's own categories follow OpenAI's, under their own names
    assert list(result.categories)[len(OPENAI_CATEGORIES) :] == ["injection", "pii"]
    assert result.categories["pii"] is True and result.categories["injection"] is False
    assert "self_harm" not in result.categories and "illegal" not in result.categories


def test_a_category_the_policy_escalated_without_a_score_is_true_with_no_score() -> None:
    """The guard model's fallback names guard_unverified, which no classifier scores."""
    result = moderation_result(
        ModerationResult(flagged=True, action="release", categories=["guard_unverified"], scores={"violence": 0.1})
    )

    assert result.categories["guard_unverified"] is True and result.category_scores["guard_unverified"] is None
    assert result.category_applied_input_types["guard_unverified"] == ["text"]


@pytest.mark.parametrize(
    ("given", "texts"),
    [
        ("one text", ["one text"]),
        (["a", "b"], ["a", "b"]),
        ([{"type": "text", "text": "a part"}], ["a part"]),
    ],
)
def test_each_of_openais_input_forms_gives_its_texts_in_order(given: object, texts: list[str]) -> None:
    assert ModerationRequest.model_validate({"input": given}).texts() == texts


@pytest.mark.parametrize(
    "body",
    [
        {"input": []},
        {"input": ["a"] * 129},
        {"input": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]},
        {"input": "a", "model": "omni-moderation-latest"},
        {"input": 5},
    ],
)
def test_what_the_route_cannot_judge_is_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ModerationRequest.model_validate(body)


def test_the_texts_of_one_request_are_bounded_in_all() -> None:
    ModerationRequested(request_id="r", inputs=["a" * 16_000, "b" * 16_000], reply_topic="replies")
    with pytest.raises(ValidationError, match="32001 characters"):
        ModerationRequested(request_id="r", inputs=["a" * 16_000, "b" * 16_001], reply_topic="replies")


def test_an_input_of_the_wrong_form_is_named_by_the_form_its_first_item_shows() -> None:
    with pytest.raises(ValidationError) as caught:
        ModerationRequest.model_validate({"input": ["a", ["nested"]]})
    ((where, why),) = [(e["loc"], e["msg"]) for e in caught.value.errors()]
    assert where == ("input", "texts", 1) and why == "Input should be a valid string"
