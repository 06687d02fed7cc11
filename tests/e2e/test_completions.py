"""OpenAI's clients (sync and async, streaming and not) on both completion routes, and /v1/completions' own format."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from openai import AsyncOpenAI, BadRequestError, NotFoundError, OpenAI
from transformers import AutoTokenizer

from tests.e2e.platform import MODELS_DIR, TINY_MODEL, Platform

PROMPT = "Once upon a time"


def sync_client(platform: Platform) -> OpenAI:
    return OpenAI(base_url=f"{platform.base_url}/v1", api_key=platform.api_key, max_retries=0, timeout=120)


def async_client(platform: Platform) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{platform.base_url}/v1", api_key=platform.api_key, max_retries=0, timeout=120)


def test_sync_client_text_completion_not_streamed(platform: Platform) -> None:
    completion = sync_client(platform).completions.create(model=TINY_MODEL, prompt=PROMPT, max_tokens=8, seed=3)
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 8
    if completion.choices[0].finish_reason == "length":
        assert completion.usage.completion_tokens == 8


async def test_async_client_text_completion_streamed_matches_the_unstreamed_text(platform: Platform) -> None:
    client = async_client(platform)
    whole = await client.completions.create(model=TINY_MODEL, prompt=PROMPT, max_tokens=12, seed=5)
    stream = await client.completions.create(
        model=TINY_MODEL, prompt=PROMPT, max_tokens=12, seed=5, stream=True, stream_options={"include_usage": True}
    )
    pieces, finish, usage = [], [], None
    async for chunk in stream:
        assert chunk.object == "text_completion"
        if chunk.choices:
            pieces.append(chunk.choices[0].text)
            if chunk.choices[0].finish_reason:
                finish.append(chunk.choices[0].finish_reason)
        if chunk.usage:
            usage = chunk.usage
    assert "".join(pieces) == whole.choices[0].text
    assert finish == [whole.choices[0].finish_reason]
    assert usage is not None and usage.total_tokens == whole.usage.total_tokens


async def test_async_client_chat_streamed_and_not(platform: Platform) -> None:
    client = async_client(platform)
    messages = [{"role": "user", "content": "Say something"}]
    whole = await client.chat.completions.create(model=TINY_MODEL, messages=messages, max_tokens=10, seed=9)
    stream = await client.chat.completions.create(
        model=TINY_MODEL, messages=messages, max_tokens=10, seed=9, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == whole.choices[0].message.content


def test_echo_puts_the_prompt_first(platform: Platform) -> None:
    completion = sync_client(platform).completions.create(
        model=TINY_MODEL, prompt=PROMPT, max_tokens=4, echo=True, seed=1
    )
    assert completion.choices[0].text.startswith(PROMPT)
    chunks = sync_client(platform).completions.create(
        model=TINY_MODEL, prompt=PROMPT, max_tokens=4, echo=True, seed=1, stream=True
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == completion.choices[0].text


def test_a_prompt_of_token_ids_is_served_as_its_text_is_and_scored_as_evaluation_harnesses_ask(
    platform: Platform,
) -> None:
    """OpenAI's API takes a prompt as token ids (lm-evaluation-harness sends them by default): the same seeded answer
    as the prompt's text gets; with echo, the decoded prompt first; and, as a harness scores a text (echo, logprobs,
    max_tokens 0 or 1), one logprob per prompt token after the first."""
    tokenizer = AutoTokenizer.from_pretrained(str(MODELS_DIR / TINY_MODEL))
    ids = tokenizer.encode(PROMPT, add_special_tokens=False)
    client = sync_client(platform)
    as_text = client.completions.create(model=TINY_MODEL, prompt=PROMPT, max_tokens=6, seed=11)
    as_ids = client.completions.create(model=TINY_MODEL, prompt=ids, max_tokens=6, seed=11)
    assert as_ids.choices[0].text == as_text.choices[0].text
    assert as_ids.usage is not None and as_ids.usage.prompt_tokens == len(ids)
    scored = client.completions.create(model=TINY_MODEL, prompt=ids, max_tokens=0, echo=True, logprobs=1)
    choice = scored.choices[0]
    assert choice.text == tokenizer.decode(ids) and choice.logprobs is not None
    assert len(choice.logprobs.token_logprobs) == len(ids) and choice.logprobs.token_logprobs[0] is None
    assert all(isinstance(lp, float) for lp in choice.logprobs.token_logprobs[1:])
    streamed = client.completions.create(model=TINY_MODEL, prompt=[ids, ids[:2]], max_tokens=3, echo=True, stream=True)
    texts: dict[int, str] = {}
    for chunk in streamed:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert texts[0].startswith(tokenizer.decode(ids)) and texts[1].startswith(tokenizer.decode(ids[:2]))


async def test_return_token_ids_gives_the_tokens_the_model_read_and_wrote_streamed_and_not(platform: Platform) -> None:
    """vLLM's return_token_ids, as reinforcement-learning rollouts use it: the prompt's ids are the chat template's,
    the generated ids spell the answer (the end-of-sequence token included, as usage counts it), and a stream's
    chunks carry the same ids as the whole answer, each once. No cached answer stands in (it keeps no ids)."""
    tokenizer = AutoTokenizer.from_pretrained(str(MODELS_DIR / TINY_MODEL))
    client = async_client(platform)
    messages = [{"role": "user", "content": "Name a colour"}]
    asked = {"model": TINY_MODEL, "messages": messages, "max_tokens": 12, "temperature": 0}
    raw = await client.chat.completions.with_raw_response.create(**asked, extra_body={"return_token_ids": True})
    assert raw.headers["x-ferry-cache"] == "bypass"
    whole = raw.parse()
    prompt_ids = (whole.model_extra or {})["prompt_token_ids"]
    template = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert prompt_ids == template["input_ids"]
    ids = (whole.choices[0].model_extra or {})["token_ids"]
    assert whole.usage is not None and len(ids) == whole.usage.completion_tokens
    assert len(prompt_ids) == whole.usage.prompt_tokens
    assert tokenizer.decode(ids, skip_special_tokens=True) == whole.choices[0].message.content

    stream = await client.chat.completions.create(**asked, stream=True, extra_body={"return_token_ids": True})
    chunks = [chunk async for chunk in stream]
    assert (chunks[0].model_extra or {})["prompt_token_ids"] == prompt_ids
    streamed = [i for c in chunks for choice in c.choices for i in (choice.model_extra or {}).get("token_ids") or []]
    assert streamed == ids
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content

    plain = await client.chat.completions.create(**asked)  # the same answer, without ids
    assert plain.choices[0].message.content == whole.choices[0].message.content
    assert "prompt_token_ids" not in (plain.model_extra or {}) and "token_ids" not in (
        plain.choices[0].model_extra or {}
    )

    text = await client.completions.create(
        model=TINY_MODEL, prompt=[PROMPT, "A"], max_tokens=5, seed=4, extra_body={"return_token_ids": True}
    )
    for choice, prompt in zip(text.choices, [PROMPT, "A"], strict=True):
        extra = choice.model_extra or {}
        assert extra["prompt_token_ids"] == tokenizer.encode(prompt, add_special_tokens=False)
        assert tokenizer.decode(extra["token_ids"], skip_special_tokens=True) == choice.text


def test_token_ids_outside_the_vocabulary_or_decoding_to_a_blocked_prompt_are_refused(platform: Platform) -> None:
    client = sync_client(platform)
    tokenizer = AutoTokenizer.from_pretrained(str(MODELS_DIR / TINY_MODEL))
    with pytest.raises(BadRequestError) as outside:
        client.completions.create(model=TINY_MODEL, prompt=[1, len(tokenizer) + 5], max_tokens=2)
    error = outside.value.body
    assert isinstance(error, dict) and error["param"] == "prompt" and "vocabulary" in error["message"], error
    secret = tokenizer.encode("My key is sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789, why?", add_special_tokens=False)
    with pytest.raises(BadRequestError) as blocked:  # screened as the text the ids decode to
        client.completions.create(model=TINY_MODEL, prompt=secret, max_tokens=2)
    error = blocked.value.body
    assert isinstance(error, dict) and error["code"] == "content_policy_violation", error


async def test_a_prompt_list_is_completed_n_times_per_prompt_in_openais_order(platform: Platform) -> None:
    client = async_client(platform)
    prompts = [PROMPT, "The weather today is"]
    fresh = {"cache-control": "no-store"}  # every choice generated, none replayed from the response cache
    greedy = {"model": TINY_MODEL, "max_tokens": 6, "temperature": 0, "extra_headers": fresh}
    alone = [await client.completions.create(prompt=prompt, **greedy) for prompt in prompts]
    listed = await client.completions.create(prompt=prompts, n=2, echo=True, **greedy)
    # choice i * n + j is prompt i's j-th, its text the prompt's (echoed) and then what that prompt alone gets
    expected = [prompt + single.choices[0].text for prompt, single in zip(prompts, alone, strict=True) for _ in "ab"]
    assert [(c.index, c.text) for c in listed.choices] == list(enumerate(expected))
    assert listed.usage is not None and all(single.usage is not None for single in alone)
    assert listed.usage.prompt_tokens == sum(single.usage.prompt_tokens for single in alone)  # type: ignore[union-attr]
    assert listed.usage.completion_tokens == 2 * sum(single.usage.completion_tokens for single in alone)  # type: ignore[union-attr]

    stream = await client.completions.create(
        prompt=prompts, n=2, echo=True, stream=True, stream_options={"include_usage": True}, **greedy
    )
    streamed, usage = ["", "", "", ""], None
    async for chunk in stream:
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
        usage = chunk.usage or usage
    assert streamed == expected and usage == listed.usage


def test_text_stream_framing_is_openais(platform: Platform) -> None:
    body = {"model": TINY_MODEL, "prompt": PROMPT, "max_tokens": 4, "stream": True}
    url = f"{platform.base_url}/v1/completions"
    with httpx.stream("POST", url, json=body, headers=platform.auth, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(c["id"] == response.headers["x-request-id"] for c in chunks)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert set(chunks[0]) == {"id", "object", "created", "model", "choices"}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"prompt": ["one", "two"], "n": 65}, "prompt"),  # 130 choices, over the limit of 128
        ({"suffix": "tail"}, "suffix"),
        ({"n": 129}, "n"),  # OpenAI's limit is 128
        ({"best_of": 3}, "best_of"),
        ({"logprobs": 21, "echo": True}, "logprobs"),  # more alternatives than vLLM keeps
    ],
)
def test_unsupported_completion_options_are_clear_400s(platform: Platform, extra: dict, param: str) -> None:
    with pytest.raises(BadRequestError) as err:
        sync_client(platform).completions.create(**({"model": TINY_MODEL, "prompt": PROMPT} | extra))
    assert err.value.body["param"] == param  # type: ignore[index]


def test_penalties_reach_the_engine(platform: Platform) -> None:
    # greedy, so only the penalty can change the text; the tiny random model repeats tokens, which penalties punish
    client = sync_client(platform)

    def greedy(**penalties: float) -> str:
        completion = client.completions.create(
            model=TINY_MODEL, prompt=PROMPT, max_tokens=32, temperature=0, **penalties
        )
        return completion.choices[0].text

    def distinct_words(text: str) -> int:
        return len(set(text.split()))

    plain = greedy()
    assert greedy(frequency_penalty=0.0, presence_penalty=0.0) == plain
    assert distinct_words(greedy(frequency_penalty=2.0)) > distinct_words(plain)
    assert distinct_words(greedy(presence_penalty=2.0)) > distinct_words(plain)
    chat = client.chat.completions.create(
        model=TINY_MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=32, temperature=0
    )
    penalised = client.chat.completions.create(
        model=TINY_MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=32,
        temperature=0,
        frequency_penalty=2.0,
    )
    assert distinct_words(penalised.choices[0].message.content or "") > distinct_words(
        chat.choices[0].message.content or ""
    )


@pytest.mark.parametrize(
    ("option", "param"),
    [
        ({"functions": [{"name": "lookup", "parameters": {"type": "object"}}]}, "functions"),
        ({"extra_body": {"use_beam_search": True}}, "use_beam_search"),  # vLLM's, sent as its clients send it
        ({"extra_body": {"chat_template": "{{ messages }}"}}, "chat_template"),
    ],
)
def test_options_ferry_cannot_honour_are_refused_not_ignored(platform: Platform, option: dict, param: str) -> None:
    with pytest.raises(BadRequestError) as err:
        sync_client(platform).chat.completions.create(
            model=TINY_MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=4, **option
        )
    assert err.value.status_code == 400
    assert err.value.body["param"] == param and err.value.body["code"] == "unsupported_parameter"  # type: ignore[index]


def test_a_history_holding_an_openai_refusal_is_served(platform: Platform) -> None:
    # a conversation carried over from OpenAI: the refused turn comes back as its response gave it, content null
    refused = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    completion = sync_client(platform).chat.completions.create(
        model=TINY_MODEL,
        messages=[{"role": "user", "content": PROMPT}, refused, {"role": "user", "content": "Then tell a story."}],
        max_tokens=4,
    )
    assert completion.choices[0].finish_reason in ("stop", "length")


def test_options_at_their_neutral_values_are_served(platform: Platform) -> None:
    completion = sync_client(platform).chat.completions.create(
        model=TINY_MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=4,
        tools=[],
        tool_choice="none",
        response_format={"type": "text"},
        logprobs=False,
        extra_body={"use_beam_search": False, "skip_special_tokens": True, "bad_words": []},  # vLLM's, asking nothing
    )
    assert completion.choices[0].finish_reason in ("stop", "length")


def test_models_are_listed_and_retrieved_as_openai_does(platform: Platform) -> None:
    client = sync_client(platform)
    listed = {m.id: m for m in client.models.list()}
    tiny = client.models.retrieve(TINY_MODEL)
    assert tiny == listed[TINY_MODEL] and tiny.object == "model"
    assert 1_700_000_000 < tiny.created <= time.time()  # when the registry listed it, in Unix seconds
    with pytest.raises(NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"  # type: ignore[index]
