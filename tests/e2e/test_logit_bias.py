"""logit_bias as OpenAI's clients send it: token ids of the model's tokenizer, as text, to biases of -100 to 100."""

from __future__ import annotations

import httpx
import pytest
from openai import BadRequestError, OpenAI
from transformers import AutoTokenizer

from tests.e2e.platform import DEFAULT_MODEL, TINY_MODEL, Platform

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def client(platform: Platform) -> OpenAI:
    return OpenAI(base_url=f"{platform.base_url}/v1", api_key=platform.api_key, max_retries=0, timeout=120)


def test_a_bias_of_100_makes_every_token_the_biased_one_on_both_routes(platform: Platform) -> None:
    tokenizer = AutoTokenizer.from_pretrained(platform.models_dir / TINY_MODEL)
    (message,) = tokenizer.encode(" message", add_special_tokens=False)  # one token of its vocabulary
    bias = {str(message): 100}
    chat = client(platform).chat.completions.create(
        model=TINY_MODEL, messages=QUESTION, max_tokens=6, temperature=1.0, logit_bias=bias
    )
    assert chat.choices[0].message.content == " message" * 6 and chat.choices[0].finish_reason == "length"
    stream = client(platform).completions.create(
        model=TINY_MODEL, prompt="Once upon a time", max_tokens=5, logit_bias=bias, stream=True
    )
    assert "".join(c.choices[0].text for c in stream if c.choices) == " message" * 5


def test_banned_tokens_never_come_out_though_the_model_would_choose_them(platform: Platform) -> None:
    tokenizer = AutoTokenizer.from_pretrained(platform.models_dir / DEFAULT_MODEL)
    banned = {tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word))[0] for word in ("Paris", " Paris")}

    def greedy_tokens(**bias: dict[str, int]) -> list[str]:
        answer = client(platform).chat.completions.create(
            model=DEFAULT_MODEL, messages=QUESTION, max_tokens=12, temperature=0, logprobs=True, **bias
        )
        assert answer.choices[0].logprobs is not None and answer.choices[0].logprobs.content is not None
        return [entry.token for entry in answer.choices[0].logprobs.content]

    assert " Paris" in greedy_tokens()  # unbiased, the model names it
    tokens = greedy_tokens(logit_bias={str(token): -100 for token in banned})
    assert not {"Paris", " Paris"} & set(tokens), tokens


def test_an_id_outside_the_model_s_vocabulary_is_a_400_naming_logit_bias(platform: Platform) -> None:
    vocabulary = len(AutoTokenizer.from_pretrained(platform.models_dir / TINY_MODEL))
    with pytest.raises(BadRequestError) as err:
        client(platform).chat.completions.create(
            model=TINY_MODEL, messages=QUESTION, max_tokens=4, logit_bias={str(vocabulary): -100}
        )
    body = err.value.body
    assert body["param"] == "logit_bias" and body["type"] == "invalid_request_error"  # type: ignore[index]
    assert str(vocabulary) in body["message"]  # type: ignore[index]
    # streamed, the same refusal comes as the stream's error event, and the model serves the next request
    with httpx.stream(
        "POST",
        f"{platform.base_url}/v1/chat/completions",
        headers=platform.auth,
        json={"model": TINY_MODEL, "messages": QUESTION, "stream": True, "logit_bias": {str(vocabulary): 1}},
        timeout=60,
    ) as response:
        streamed = response.read().decode()
    assert '"param":"logit_bias"' in streamed and streamed.rstrip().endswith("data: [DONE]"), streamed
    after = client(platform).chat.completions.create(model=TINY_MODEL, messages=QUESTION, max_tokens=2)
    assert after.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("bias", "param"),
    [({"ferry": 1}, "logit_bias.ferry"), ({"-3": 1}, "logit_bias.-3"), ({"12": 101}, "logit_bias.12")],
)
def test_a_bias_that_is_not_token_ids_to_values_within_100_is_a_400_naming_the_entry(
    platform: Platform, bias: dict, param: str
) -> None:
    response = httpx.post(
        f"{platform.base_url}/v1/chat/completions",
        headers=platform.auth,
        json={"model": TINY_MODEL, "messages": QUESTION, "logit_bias": bias},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param and response.json()["error"]["code"] == "invalid_value"
