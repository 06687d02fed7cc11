"""Log-probabilities through the whole platform with OpenAI's client: the engine's figures for each generated token
(and each token of an echoed prompt), in the chat API's form and the legacy completions API's form, streamed and
not."""

from __future__ import annotations

import math

import pytest
from openai import AsyncOpenAI, BadRequestError, OpenAI

from tests.e2e.platform import DEFAULT_MODEL, TINY_MODEL, Platform
from tests.e2e.test_tenants import assert_error, chat

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def client(platform: Platform) -> OpenAI:
    return OpenAI(base_url=f"{platform.base_url}/v1", api_key=platform.api_key, max_retries=0, timeout=120)


def test_greedy_tokens_are_the_most_likely_ones_and_spell_the_answer(platform: Platform) -> None:
    answer = client(platform).chat.completions.create(
        model=DEFAULT_MODEL, messages=QUESTION, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = answer.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None and answer.usage is not None
    entries = choice.logprobs.content
    assert len(entries) == answer.usage.completion_tokens  # one per generated token
    assert "".join(e.token for e in entries).startswith(choice.message.content or "-")
    assert "Paris" in "".join(e.token for e in entries)
    for e in entries:
        assert e.bytes == list(e.token.encode())
        assert len(e.top_logprobs) == 3
        ranked = [t.logprob for t in e.top_logprobs]
        assert ranked == sorted(ranked, reverse=True) and all(lp <= 0 for lp in ranked)
        assert sum(math.exp(lp) for lp in ranked) <= 1 + 1e-4  # probabilities of distinct tokens
        # temperature 0 picks the most likely token at every position
        assert e.token == e.top_logprobs[0].token and e.logprob == pytest.approx(e.top_logprobs[0].logprob, abs=1e-4)


async def test_streamed_chunks_carry_the_logprobs_of_the_unstreamed_answer(platform: Platform) -> None:
    aclient = AsyncOpenAI(base_url=f"{platform.base_url}/v1", api_key=platform.api_key, max_retries=0, timeout=120)
    asked = {"model": TINY_MODEL, "messages": QUESTION, "max_tokens": 16, "seed": 3, "logprobs": True}
    whole = await aclient.chat.completions.create(**asked)  # type: ignore[call-overload]
    stream = await aclient.chat.completions.create(**asked, stream=True)  # type: ignore[call-overload]
    streamed, text = [], ""
    async for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.logprobs and choice.logprobs.content:
                streamed += choice.logprobs.content
    expected = whole.choices[0].logprobs.content
    assert text == whole.choices[0].message.content
    assert [e.token for e in streamed] == [e.token for e in expected]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in expected], abs=1e-3)
    assert all(e.top_logprobs == [] for e in streamed)  # top_logprobs not asked for


def test_tokens_as_ids_are_the_ids_generated_and_their_alternatives_ids(platform: Platform) -> None:
    """vLLM's return_tokens_as_token_ids, with return_token_ids beside it: each logprob entry is named by the id of
    the token generated there; under greedy decoding that token is the most likely alternative."""
    openai = client(platform)
    extra = {"return_tokens_as_token_ids": True, "return_token_ids": True}
    answer = openai.chat.completions.create(
        model=TINY_MODEL,
        messages=QUESTION,
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        extra_body=extra,
    )
    choice = answer.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    ids = (choice.model_extra or {})["token_ids"]
    assert [e.token for e in choice.logprobs.content] == [f"token_id:{i}" for i in ids]
    assert all(e.top_logprobs[0].token == e.token for e in choice.logprobs.content)
    plain = openai.chat.completions.create(
        model=TINY_MODEL, messages=QUESTION, max_tokens=8, temperature=0, logprobs=True
    ).choices[0]
    assert plain.logprobs is not None and plain.logprobs.content is not None
    assert [e.bytes for e in choice.logprobs.content] == [e.bytes for e in plain.logprobs.content]  # the text's
    text = openai.completions.create(
        model=TINY_MODEL,
        prompt="Once upon a time",
        max_tokens=6,
        temperature=0,
        logprobs=1,
        echo=True,
        extra_body=extra,
    ).choices[0]
    assert text.logprobs is not None and text.logprobs.tokens is not None
    prompt_ids, generated = (text.model_extra or {})["prompt_token_ids"], (text.model_extra or {})["token_ids"]
    assert text.logprobs.tokens == [f"token_id:{i}" for i in prompt_ids + generated]


def test_text_completions_give_tokens_their_logprobs_alternatives_and_offsets(platform: Platform) -> None:
    completion = client(platform).completions.create(
        model=TINY_MODEL, prompt="Once upon a time", max_tokens=8, temperature=0, logprobs=2
    )
    choice = completion.choices[0]
    assert choice.logprobs is not None and completion.usage is not None
    lp = choice.logprobs
    count = completion.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == count
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    assert all(len(top) == 2 and lp.tokens[i] in top for i, top in enumerate(lp.top_logprobs))  # greedy: the best


def test_an_echoed_prompt_is_scored_as_the_model_scores_its_own_tokens(platform: Platform) -> None:
    """The way evaluation harnesses (lm-evaluation-harness's local-completions) score a text: echo, logprobs, one
    token. The score of a prompt's last token is the logprob the model gave that token when it generated it."""
    openai = client(platform)
    prompt = "The capital of France is"
    generated = openai.completions.create(model=DEFAULT_MODEL, prompt=prompt, max_tokens=1, temperature=0, logprobs=1)
    assert generated.choices[0].logprobs is not None and generated.choices[0].logprobs.token_logprobs is not None
    word, word_logprob = generated.choices[0].text, generated.choices[0].logprobs.token_logprobs[0]
    scored = openai.completions.create(
        model=DEFAULT_MODEL, prompt=prompt + word, max_tokens=1, temperature=0, logprobs=1, echo=True
    )
    choice, usage = scored.choices[0], scored.usage
    assert choice.logprobs is not None and usage is not None
    lp = choice.logprobs
    assert lp.tokens is not None and lp.token_logprobs is not None and lp.top_logprobs is not None
    assert lp.text_offset is not None
    n = usage.prompt_tokens
    assert len(lp.tokens) == n + usage.completion_tokens  # the prompt's tokens, then the generated one
    assert "".join(lp.tokens[:n]) == prompt + word and choice.text.startswith(prompt + word)
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing comes before the first token
    assert all(x is not None and x <= 0 for x in lp.token_logprobs[1:])
    assert lp.tokens[n - 1] == word
    assert lp.token_logprobs[n - 1] == pytest.approx(word_logprob, abs=1e-2)
    assert lp.top_logprobs[n - 1] == {word: pytest.approx(word_logprob, abs=1e-2)}  # greedy: the most likely
    # max_tokens 0 (OpenAI's legacy way to score a text): the prompt alone, with the same entries
    alone = openai.completions.create(
        model=DEFAULT_MODEL, prompt=prompt + word, max_tokens=0, temperature=0, logprobs=1, echo=True
    ).choices[0]
    assert alone.text == prompt + word and alone.logprobs is not None
    assert alone.logprobs.tokens == lp.tokens[:n] and alone.logprobs.text_offset == lp.text_offset[:n]
    assert alone.logprobs.token_logprobs == pytest.approx(lp.token_logprobs[:n], abs=1e-3)


async def test_a_streamed_echo_carries_the_prompts_logprobs_first(platform: Platform) -> None:
    aclient = AsyncOpenAI(base_url=f"{platform.base_url}/v1", api_key=platform.api_key, max_retries=0, timeout=120)
    asked = {"model": TINY_MODEL, "prompt": "Once upon a time", "max_tokens": 6, "seed": 5, "logprobs": 2, "echo": True}
    whole = (await aclient.completions.create(**asked)).choices[0]  # type: ignore[call-overload]
    stream = await aclient.completions.create(**asked, stream=True)  # type: ignore[call-overload]
    chunks = [chunk.choices[0] async for chunk in stream if chunk.choices]
    assert chunks[0].text == "Once upon a time"
    assert chunks[0].logprobs is not None and chunks[0].logprobs.token_logprobs is not None
    assert chunks[0].logprobs.token_logprobs[0] is None
    assert "".join(c.text for c in chunks) == whole.text
    assert whole.logprobs is not None
    streamed = [t for c in chunks if c.logprobs for t in c.logprobs.tokens or []]
    offsets = [o for c in chunks if c.logprobs for o in c.logprobs.text_offset or []]
    assert streamed == whole.logprobs.tokens and offsets == whole.logprobs.text_offset


def test_a_reply_too_large_for_a_kafka_record_is_a_clear_400_and_harms_nothing(platform: Platform) -> None:
    # 1951 prompt tokens of the tiny model, each with its 20 alternatives: about 1.7 MB of JSON, past the 1 MiB a
    # Kafka record may hold
    prompt = "Once upon a time there was a ferry. " * 150
    openai = client(platform)
    with pytest.raises(BadRequestError) as err:
        openai.completions.create(model=TINY_MODEL, prompt=prompt, max_tokens=1, logprobs=20, echo=True)
    body = err.value.body
    assert isinstance(body, dict) and body["param"] == "logprobs" and "1 MiB" in body["message"]
    # answered once, not delivered again and again: the worker is free, and a smaller request is served
    fewer = openai.completions.create(model=TINY_MODEL, prompt=prompt, max_tokens=1, logprobs=1, echo=True)
    assert fewer.choices[0].logprobs is not None and fewer.usage is not None
    assert len(fewer.choices[0].logprobs.tokens or []) == fewer.usage.total_tokens


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"top_logprobs": 3}, 400, "top_logprobs"),  # alternatives without logprobs: true
        ({"logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    ],
)
def test_impossible_logprob_requests_are_400s_naming_the_field(
    platform: Platform, body: dict, status: int, param: str
) -> None:
    error = assert_error(chat(platform, platform.api_key, **body), status, "invalid_value")
    assert error["param"] == param
