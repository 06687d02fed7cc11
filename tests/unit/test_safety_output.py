from __future__ import annotations

import pytest

from services.safety.output import ContentBlocked, OutputDelta, OutputGuard
from services.safety.policy import DEFAULT_POLICY, CategoryRule, Policy
from services.safety.review import deliveries
from services.safety.screening import Screener
from shared.contracts import (
    CompletionFinished,
    CompletionRequested,
    ContentFlagged,
    TokensGenerated,
    Usage,
)

HOLD_PII = DEFAULT_POLICY.model_copy(
    update={"output": dict(DEFAULT_POLICY.output) | {"pii": CategoryRule(escalate_at=0.5, escalate="hold")}}
)


def request(stream: bool = True, retain: bool = False) -> CompletionRequested:
    return CompletionRequested(
        request_id="r1",
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        reply_topic="replies",
        stream=stream,
        retain_text=retain,
    )


def final(text: str, sequence: int) -> CompletionFinished:
    return CompletionFinished(
        request_id="r1",
        sequence=sequence,
        model="m",
        text=text,
        finish_reason="stop",
        usage=Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
    )


async def guard_for(policy: Policy, flagged: list[ContentFlagged], every: int = 10) -> OutputGuard:
    async def policy_for(tenant: str | None, digest: str | None) -> Policy:
        return policy

    async def flag(item: ContentFlagged) -> None:
        flagged.append(item)

    return OutputGuard(Screener(), policy_for, flag, window_chars=200, every_chars=every)


async def test_a_secret_in_the_output_stops_the_stream_with_content_blocked() -> None:
    screen = await (await guard_for(DEFAULT_POLICY, [])).start(request())
    assert await screen.pass_delta(OutputDelta("Here is a key: ", 4)) == OutputDelta("Here is a key: ", 4)
    with pytest.raises(ContentBlocked) as caught:
        await screen.pass_delta(OutputDelta("AKIAIOSFODNN7EXAMPLE and more", 6))
    failure = caught.value.failure(1)
    assert (failure.code, failure.sequence) == ("content_blocked", 1)
    assert "output" in failure.message and "secrets" in failure.message


async def test_a_held_output_keeps_the_rest_back_and_goes_to_review_with_its_final_event() -> None:
    flagged: list[ContentFlagged] = []
    screen = await (await guard_for(HOLD_PII, flagged)).start(request())
    assert await screen.pass_delta(OutputDelta("Sure, write to ", 4)) == OutputDelta("Sure, write to ", 4)
    assert await screen.pass_delta(OutputDelta("bob@example.com today", 5)) is None
    assert await screen.pass_delta(OutputDelta(" and tomorrow", 2)) is None
    text = "Sure, write to bob@example.com today and tomorrow"
    # the worker's readers made the held delta of what was kept back (tests/unit/test_worker_held_outputs.py)
    held_delta = TokensGenerated(request_id="r1", sequence=1, text=text[15:], token_count=7, text_offset=15)
    completion = final(text, 2)
    assert await screen.finish(completion, held_delta) is None
    (item,) = flagged
    assert (item.stage, item.action, item.categories, item.text) == ("output", "hold", ["pii"], None)
    assert "bob@example.com" not in item.snippet
    assert item.held_delta == held_delta and item.held_completion == completion

    approved = deliveries("output", ((), item.held_completion, item.held_delta), "r1", "approve", [], ["pii"])
    assert [type(d.message).__name__ for d in approved] == ["TokensGenerated", "CompletionFinished"]
    (rejected,) = deliveries("output", ((), item.held_completion, item.held_delta), "r1", "reject", ["pii"], ["pii"])
    assert rejected.message.code == "content_blocked" and rejected.message.sequence == 1  # type: ignore[attr-defined]


async def test_release_then_review_delivers_and_flags_once_with_text_only_when_retained() -> None:
    flagged: list[ContentFlagged] = []
    screen = await (await guard_for(DEFAULT_POLICY, flagged, every=5)).start(request(stream=False, retain=True))
    for piece in ["mail ", "ann@example.org ", "or ", "call ", "later"]:
        assert await screen.pass_delta(OutputDelta(piece, 1)) == OutputDelta(piece, 1)
    text = "mail ann@example.org or call later"
    done = await screen.finish(final(text, 0))
    assert done is not None and done.text == text
    (item,) = flagged
    assert item.action == "release" and item.text == text


async def test_the_reviewer_of_a_held_reasoning_output_reads_all_the_model_wrote() -> None:
    flagged: list[ContentFlagged] = []
    screen = await (await guard_for(HOLD_PII, flagged)).start(request(retain=True))
    assert await screen.pass_delta(OutputDelta("<think>I will mail ", 4)) is not None  # the think block is screened
    assert await screen.pass_delta(OutputDelta("bob@example.com</think>Done.", 6)) is None
    reasoned = final("Done.", 1).model_copy(update={"reasoning": "I will mail bob@example.com"})
    assert await screen.finish(reasoned) is None
    (item,) = flagged
    assert item.text == "<think>I will mail bob@example.com</think>Done."


async def test_a_clean_output_passes_untouched() -> None:
    flagged: list[ContentFlagged] = []
    screen = await (await guard_for(DEFAULT_POLICY, flagged)).start(request())
    assert await screen.pass_delta(OutputDelta("Paris is the capital.", 5)) == OutputDelta("Paris is the capital.", 5)
    assert await screen.finish(final("Paris is the capital.", 1)) is not None
    assert flagged == []
