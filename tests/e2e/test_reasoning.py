"""A reasoning model's thinking comes apart from its answer, as vLLM's server with a reasoning parser gives it: in
``message.reasoning`` and in the stream's ``reasoning`` deltas, counted in ``usage.completion_tokens_details``. Under
a grammar it thinks first and the grammar holds for its answer; ``thinking_token_budget`` caps its thinking.

The tiny model's template strips think blocks as Qwen3's does, so ferry reads it as a reasoning model, and with
``enable_thinking`` it opens the block itself (as DeepSeek V3.1's does). Its random weights would think until
``max_tokens``: a thinking budget makes them close the block, and a regular expression (vLLM's structured outputs)
shapes the answer after it."""

from __future__ import annotations

import re

import pytest
from openai import BadRequestError, OpenAI

from tests.e2e.platform import TINY_MODEL, Platform

THOUGHT_THEN_ANSWER = r"<think>\n[a-z]{2,8}( [a-z]{2,8}){0,2}\n</think>\n\n[A-Z][a-z]{2,8}\."
ANSWER = r"[A-Z][a-z]{2,8}\."
BUDGET = 8
THINK_THEN_ANSWER = {
    "chat_template_kwargs": {"enable_thinking": True},
    "thinking_token_budget": BUDGET,
    "structured_outputs": {"regex": ANSWER},
}
"""Request fields that make the tiny model think (at most BUDGET tokens), then answer as ANSWER says."""
QUESTION = [{"role": "user", "content": "What is two plus two?"}]


def client(platform: Platform) -> OpenAI:
    return OpenAI(base_url=f"{platform.base_url}/v1", api_key=platform.api_key, max_retries=0, timeout=120)


def ask(platform: Platform, seed: int, **options: object):  # type: ignore[no-untyped-def]
    return client(platform).chat.completions.create(
        model=TINY_MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=60,
        seed=seed,
        extra_body=THINK_THEN_ANSWER | options.pop("extra_body", {}),  # type: ignore[operator]
        **options,
    )


def reasoning_of(choice) -> str | None:  # type: ignore[no-untyped-def]
    return (choice.message.model_extra or {}).get("reasoning")


def test_the_model_thinks_within_its_budget_then_answers_under_the_grammar(platform: Platform) -> None:
    for seed in (1, 2):
        completion = ask(platform, seed)
        choice = completion.choices[0]
        reasoning = reasoning_of(choice)
        assert choice.finish_reason == "stop"
        assert reasoning and "think>" not in reasoning, reasoning  # the markers left out
        assert re.fullmatch(ANSWER, choice.message.content or ""), choice.message.content  # the grammar held after
        usage = completion.usage
        assert usage is not None and usage.completion_tokens_details is not None
        thinking = usage.completion_tokens_details.reasoning_tokens or 0
        assert 0 < thinking <= BUDGET < usage.completion_tokens  # the tokens inside the block, no more than asked

        # streamed with the same seed: the same output, the reasoning first, in deltas of its own
        pieces = []
        for chunk in ask(platform, seed, stream=True, stream_options={"include_usage": True}):
            if chunk.choices:
                delta = chunk.choices[0].delta
                for kind, text in (
                    ("reasoning", (delta.model_extra or {}).get("reasoning")),
                    ("content", delta.content),
                ):
                    if text:
                        pieces.append((kind, text))
            else:
                assert chunk.usage is not None and chunk.usage.completion_tokens_details is not None
                assert chunk.usage.completion_tokens_details.reasoning_tokens == thinking
        kinds = [kind for kind, _ in pieces]
        assert kinds == sorted(kinds, key=["reasoning", "content"].index) and kinds.count("reasoning") > 1, pieces
        assert "".join(text for kind, text in pieces if kind == "reasoning") == reasoning
        assert "".join(text for kind, text in pieces if kind == "content") == choice.message.content


def test_a_choice_is_made_after_thinking_too(platform: Platform) -> None:
    completion = ask(platform, 4, extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    choice = completion.choices[0]
    assert reasoning_of(choice) and choice.message.content in ("yes", "no") and choice.finish_reason == "stop"


def test_without_a_budget_the_model_thinks_until_max_tokens_and_with_one_it_goes_on_to_answer(
    platform: Platform,
) -> None:
    unbounded = ask(platform, 5, extra_body={"thinking_token_budget": None, "structured_outputs": None})
    choice = unbounded.choices[0]
    assert choice.finish_reason == "length" and reasoning_of(choice) and not choice.message.content
    # a budget alone: no grammar on the answer, which is the model's own text
    budgeted = ask(platform, 5, extra_body={"thinking_token_budget": 4, "structured_outputs": None})
    choice, usage = budgeted.choices[0], budgeted.usage
    assert reasoning_of(choice) and choice.message.content
    assert usage is not None and usage.completion_tokens_details is not None
    assert 0 < (usage.completion_tokens_details.reasoning_tokens or 0) <= 4


def test_with_thinking_switched_off_the_grammar_holds_from_the_first_token(platform: Platform) -> None:
    completion = ask(platform, 6, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    choice = completion.choices[0]
    assert reasoning_of(choice) is None and re.fullmatch(ANSWER, choice.message.content or "")
    assert completion.usage is not None and completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 0


def test_include_reasoning_false_leaves_the_thinking_out_but_counts_its_tokens(platform: Platform) -> None:
    full = ask(platform, 3)
    bare = ask(platform, 3, extra_body={"include_reasoning": False})
    assert (bare.choices[0].message.model_extra or {}).get("reasoning") is None
    assert bare.choices[0].message.content == full.choices[0].message.content
    assert bare.usage == full.usage
    streamed = ask(platform, 3, stream=True, extra_body={"include_reasoning": False})
    deltas = [chunk.choices[0].delta for chunk in streamed if chunk.choices]
    assert not any((d.model_extra or {}).get("reasoning") for d in deltas)
    assert "".join(d.content or "" for d in deltas) == full.choices[0].message.content


def test_a_raw_prompt_is_not_read_for_reasoning(platform: Platform) -> None:
    completion = client(platform).completions.create(
        model=TINY_MODEL,
        prompt="Two plus two:",
        max_tokens=120,
        seed=1,
        extra_body={"structured_outputs": {"regex": THOUGHT_THEN_ANSWER}},
    )
    assert re.fullmatch(THOUGHT_THEN_ANSWER, completion.choices[0].text)  # the block stays in the text
    assert completion.usage is not None and completion.usage.completion_tokens_details is None


def prompt_tokens(platform: Platform, messages: list[dict], **options: object) -> int:
    completion = client(platform).chat.completions.create(
        model=TINY_MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=1,
        **options,  # type: ignore[arg-type]
    )
    assert completion.usage is not None
    return completion.usage.prompt_tokens


def test_the_thinking_switches_reach_the_model_s_template(platform: Platform) -> None:
    default = prompt_tokens(platform, QUESTION)
    # with thinking off, the template writes an empty block after the generation prompt, as Qwen3's does
    off = prompt_tokens(platform, QUESTION, reasoning_effort="none")
    assert off > default
    assert prompt_tokens(platform, QUESTION, extra_body={"chat_template_kwargs": {"enable_thinking": False}}) == off
    # with thinking on, it opens the block itself
    on = prompt_tokens(platform, QUESTION, reasoning_effort="high")
    assert on > default
    # the template's own switch wins, as in vLLM
    switched_on = {"chat_template_kwargs": {"enable_thinking": True}}
    assert prompt_tokens(platform, QUESTION, reasoning_effort="none", extra_body=switched_on) == on
    with pytest.raises(BadRequestError) as err:  # a template's other variables are not the client's to set
        prompt_tokens(platform, QUESTION, extra_body={"chat_template_kwargs": {"add_generation_prompt": False}})
    assert err.value.body["param"] == "chat_template_kwargs.add_generation_prompt"  # type: ignore[index]


def test_the_reasoning_of_an_answer_s_earlier_steps_reaches_the_template(platform: Platform) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    step = {"role": "assistant", "content": None, "tool_calls": [call]}
    steps = [*QUESTION, step, {"role": "tool", "tool_call_id": "call_1", "content": "noon"}]
    reasoned = [*QUESTION, step | {"reasoning": "I need the time."}, steps[-1]]
    assert prompt_tokens(platform, reasoned) > prompt_tokens(platform, steps)
    # before the last user turn the template drops it, as Qwen3's does; vLLM's former name is taken too
    earlier = [*QUESTION, {"role": "assistant", "content": "Four."}, {"role": "user", "content": "And three?"}]
    earlier_reasoned = [earlier[0], earlier[1] | {"reasoning_content": "Two and two."}, earlier[2]]
    assert prompt_tokens(platform, earlier_reasoned) == prompt_tokens(platform, earlier)
