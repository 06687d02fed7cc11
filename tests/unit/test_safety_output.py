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
    FunctionCall,
    PromptLogprobs,
    SamplingParams,
    TokenLogprob,
    ToolCall,
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
    assert await screen.finish(final(text, 1)) is None
    (item,) = flagged
    assert (item.stage, item.action, item.categories, item.text) == ("output", "hold", ["pii"], None)
    assert "bob@example.com" not in item.snippet
    assert item.held_delta is not None and item.held_completion is not None
    assert item.held_delta.text == "bob@example.com today and tomorrow" and item.held_delta.text_offset == 15
    assert item.held_delta.token_count == 7 and item.held_delta.logprobs is None  # none asked for
    assert (item.held_delta.sequence, item.held_completion.sequence) == (1, 2)

    approved = deliveries("output", ((), item.held_completion, item.held_delta), "r1", "approve", [], ["pii"])
    assert [type(d.message).__name__ for d in approved] == ["TokensGenerated", "CompletionFinished"]
    (rejected,) = deliveries("output", ((), item.held_completion, item.held_delta), "r1", "reject", ["pii"], ["pii"])
    assert rejected.message.code == "content_blocked" and rejected.message.sequence == 1  # type: ignore[attr-defined]


async def test_a_held_output_keeps_its_tokens_logprobs_with_the_held_text() -> None:
    flagged: list[ContentFlagged] = []
    asked = request().model_copy(update={"sampling": SamplingParams(logprobs=1)})
    screen = await (await guard_for(HOLD_PII, flagged)).start(asked)

    def logprobs(*tokens: str) -> tuple[TokenLogprob, ...]:
        return tuple(TokenLogprob(token=t, logprob=-0.5) for t in tokens)

    await screen.pass_delta(OutputDelta("Sure, write to ", 4, logprobs("Sure", ",", " write", " to ")))
    assert await screen.pass_delta(OutputDelta("bob@example.com", 2, logprobs("bob@", "example.com"))) is None
    await screen.finish(final("Sure, write to bob@example.com", 1))
    (item,) = flagged
    assert item.held_delta is not None and item.held_delta.logprobs is not None
    assert [e.token for e in item.held_delta.logprobs] == ["bob@", "example.com"]
    assert (item.held_delta.token_offset, item.held_delta.token_count) == (4, 2)


async def test_an_output_held_from_its_first_token_still_brings_the_prompts_logprobs_first() -> None:
    flagged: list[ContentFlagged] = []
    asked = request().model_copy(update={"sampling": SamplingParams(logprobs=0, prompt_logprobs=0)})
    screen = await (await guard_for(HOLD_PII, flagged)).start(asked)
    assert await screen.pass_delta(OutputDelta("bob@example.com", 2, ())) is None
    prompt = PromptLogprobs(first_token="Write", tokens=[TokenLogprob(token=" mail", logprob=-1.0)])
    await screen.finish(final("bob@example.com", 0).model_copy(update={"prompt_logprobs": prompt}))
    (item,) = flagged
    assert item.held_delta is not None and item.held_delta.sequence == 0
    assert item.held_delta.prompt_logprobs == prompt  # the stream's first event carries them, as the worker's does


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


async def test_a_held_reasoning_output_keeps_back_the_rest_of_its_reasoning_and_of_its_answer() -> None:
    flagged: list[ContentFlagged] = []
    screen = await (await guard_for(HOLD_PII, flagged)).start(request(retain=True))
    assert await screen.pass_delta(OutputDelta("<think>I will mail ", 4)) is not None  # the think block is screened
    assert await screen.pass_delta(OutputDelta("bob@example.com</think>Done.", 6)) is None
    # the worker read the block apart: the client has "I will mail " of the reasoning and none of the answer
    reasoned = final("Done.", 1).model_copy(update={"reasoning": "I will mail bob@example.com"})
    assert await screen.finish(reasoned, delivered=(0, len("I will mail "))) is None
    (item,) = flagged
    assert item.held_delta is not None
    held = item.held_delta
    assert (held.reasoning, held.reasoning_offset, held.text, held.text_offset) == ("bob@example.com", 12, "Done.", 0)
    assert item.text == "<think>I will mail bob@example.com</think>Done."  # the reviewer reads all the model wrote


async def test_a_clean_output_passes_untouched() -> None:
    flagged: list[ContentFlagged] = []
    screen = await (await guard_for(DEFAULT_POLICY, flagged)).start(request())
    assert await screen.pass_delta(OutputDelta("Paris is the capital.", 5)) == OutputDelta("Paris is the capital.", 5)
    assert await screen.finish(final("Paris is the capital.", 1)) is not None
    assert flagged == []


async def test_a_held_tool_call_is_released_as_the_call_not_as_its_text() -> None:
    flagged: list[ContentFlagged] = []
    screen = await (await guard_for(HOLD_PII, flagged)).start(request())
    assert await screen.pass_delta(OutputDelta("Mailing. ", 3)) is not None
    call_text = '<tool_call>{"name": "send", "arguments": {"to": "bob@example.com"}}</tool_call>'
    assert await screen.pass_delta(OutputDelta(call_text, 20)) is None  # the call's arguments are screened too
    # the worker read the call out of the text: the client's text is "Mailing. ", all of it sent already
    call = ToolCall(id="call_1", function=FunctionCall(name="send", arguments='{"to": "bob@example.com"}'))
    called = final("Mailing. ", 1).model_copy(update={"finish_reason": "tool_calls", "tool_calls": [call]})
    assert await screen.finish(called, delivered=(9, None)) is None
    (item,) = flagged
    assert item.held_delta is not None and item.held_completion is not None
    assert (item.held_delta.text, item.held_delta.text_offset, item.held_delta.token_count) == ("", 9, 20)
    assert item.held_completion.tool_calls == [call] and item.held_completion.finish_reason == "tool_calls"
