"""vLLM's sampling options beyond OpenAI's (top_k, min_p, repetition_penalty, min_tokens, ignore_eos, stop_token_ids,
structured_outputs), sent as clients of vLLM's own server send them: in extra_body."""

from __future__ import annotations

import re

import httpx
import pytest
from openai import BadRequestError, OpenAI
from transformers import AutoTokenizer

from tests.e2e.platform import DEFAULT_MODEL, TINY_MODEL, Platform
from tests.e2e.test_safety import SECRET_PROMPT

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def client(platform: Platform) -> OpenAI:
    return OpenAI(base_url=f"{platform.base_url}/v1", api_key=platform.api_key, max_retries=0, timeout=120)


def answer(platform: Platform, **options: object) -> tuple[str, int, str]:
    """The text, completion tokens and finish reason of SmolLM2's answer to QUESTION."""
    completion = client(platform).chat.completions.create(
        model=DEFAULT_MODEL, messages=QUESTION, max_tokens=32, **options
    )
    assert completion.usage is not None
    choice = completion.choices[0]
    return choice.message.content or "", completion.usage.completion_tokens, choice.finish_reason


def test_top_k_1_and_min_p_1_sample_only_the_likeliest_token(platform: Platform) -> None:
    greedy, _, _ = answer(platform, temperature=0)
    # at temperature 1.5 and any seed, only the likeliest token is left to sample: the greedy answer
    for seed in (1, 2):
        assert answer(platform, temperature=1.5, seed=seed)[0] != greedy  # without the option, other tokens come
        assert answer(platform, temperature=1.5, seed=seed, extra_body={"top_k": 1})[0] == greedy
        assert answer(platform, temperature=1.5, seed=seed, extra_body={"min_p": 1.0})[0] == greedy
    # off (vLLM's -1 and 0), the same seed samples as without the option
    sampled = answer(platform, temperature=1.5, seed=3)[0]
    assert answer(platform, temperature=1.5, seed=3, extra_body={"top_k": -1, "min_p": 0})[0] == sampled


def test_min_tokens_keeps_the_model_going_past_its_end_of_turn(platform: Platform) -> None:
    _, tokens, finish = answer(platform, temperature=0)
    assert finish == "stop" and tokens < 20  # SmolLM2 answers in one short sentence
    _, longer, _ = answer(platform, temperature=0, extra_body={"min_tokens": 20})
    assert longer >= 20


def test_ignore_eos_runs_to_max_tokens_and_a_stop_token_ends_the_answer_before_it(platform: Platform) -> None:
    text, tokens, finish = answer(platform, temperature=0)
    assert " Paris" in text and finish == "stop" and tokens < 32
    _, tokens, finish = answer(platform, temperature=0, extra_body={"ignore_eos": True})
    assert (tokens, finish) == (32, "length")
    tokenizer = AutoTokenizer.from_pretrained(platform.models_dir / DEFAULT_MODEL)
    paris = tokenizer.encode(" Paris", add_special_tokens=False)
    cut, _, finish = answer(platform, temperature=0, extra_body={"stop_token_ids": paris})
    assert (cut, finish) == (text[: text.index(" Paris")], "stop")
    with pytest.raises(BadRequestError) as err:  # only the worker knows the vocabulary
        answer(platform, extra_body={"stop_token_ids": [len(tokenizer)]})
    assert err.value.body["param"] == "stop_token_ids"  # type: ignore[index]


def test_a_stop_string_can_stay_in_the_text_and_bad_words_are_never_written(platform: Platform) -> None:
    text, _, _ = answer(platform, temperature=0)
    cut, _, finish = answer(platform, temperature=0, stop=["Paris"])
    assert (cut, finish) == (text[: text.index("Paris")], "stop")
    kept, _, finish = answer(platform, temperature=0, stop=["Paris"], extra_body={"include_stop_str_in_output": True})
    assert (kept, finish) == (cut + "Paris", "stop")
    avoided, _, _ = answer(platform, temperature=0, extra_body={"bad_words": ["Paris"]})
    assert "Paris" not in avoided and avoided != text


def test_allowed_token_ids_are_the_only_tokens_sampled(platform: Platform) -> None:
    tokenizer = AutoTokenizer.from_pretrained(platform.models_dir / DEFAULT_MODEL)
    allowed = [tokenizer.encode(word, add_special_tokens=False)[0] for word in (" yes", " no", " maybe")]
    completion = client(platform).chat.completions.create(
        model=DEFAULT_MODEL,
        messages=QUESTION,
        max_tokens=6,
        temperature=1.0,
        seed=4,
        logprobs=True,
        extra_body={"allowed_token_ids": allowed, "ignore_eos": True},
    )
    content = completion.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 6
    assert {entry.token for entry in content} <= {" yes", " no", " maybe"}
    with pytest.raises(BadRequestError) as err:  # only the worker knows the vocabulary
        answer(platform, extra_body={"allowed_token_ids": [len(tokenizer) + 10]})
    assert err.value.body["param"] == "allowed_token_ids"  # type: ignore[index]


def test_skip_special_tokens_false_keeps_the_special_tokens_the_model_writes(platform: Platform) -> None:
    """The tiny model held to its <|im_start|> token (a special token, not one that ends the answer): the text leaves
    it out by default and keeps it with skip_special_tokens false, streamed or not, and the greedy answer cached for
    one is not served for the other."""
    tokenizer = AutoTokenizer.from_pretrained(platform.models_dir / TINY_MODEL)
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert start in tokenizer.all_special_ids and start != tokenizer.eos_token_id
    asked = {"model": TINY_MODEL, "messages": QUESTION, "max_tokens": 3, "temperature": 0}
    held = {"allowed_token_ids": [start]}
    skipped = client(platform).chat.completions.create(**asked, extra_body=held)  # type: ignore[call-overload]
    kept = client(platform).chat.completions.create(**asked, extra_body=held | {"skip_special_tokens": False})  # type: ignore[call-overload]
    assert skipped.choices[0].message.content == "" and skipped.usage.completion_tokens == 3
    assert kept.choices[0].message.content == "<|im_start|>" * 3
    stream = client(platform).chat.completions.create(
        **asked, stream=True, extra_body=held | {"skip_special_tokens": False}
    )  # type: ignore[call-overload]
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "<|im_start|>" * 3


def test_truncate_prompt_tokens_answers_a_prompt_longer_than_the_context_with_its_end(platform: Platform) -> None:
    """vLLM's truncate_prompt_tokens: a chat longer than the tiny model's 2048-token context is refused as it is,
    and answered when cut to what the context holds (-1) or to a number of tokens; an echo shows the prompt cut."""
    tokenizer = AutoTokenizer.from_pretrained(platform.models_dir / TINY_MODEL)
    long_chat = [{"role": "user", "content": " ".join(["serendipitous"] * 3000)}]
    asked = {"model": TINY_MODEL, "messages": long_chat, "max_tokens": 4, "temperature": 0}
    with pytest.raises(BadRequestError) as err:
        client(platform).chat.completions.create(**asked)  # type: ignore[call-overload]
    assert err.value.body["code"] == "context_length_exceeded"  # type: ignore[index]
    whole = client(platform).chat.completions.create(**asked, extra_body={"truncate_prompt_tokens": -1})  # type: ignore[call-overload]
    assert whole.usage is not None and whole.usage.prompt_tokens == 2047 and whole.usage.completion_tokens == 1
    cut = client(platform).chat.completions.create(
        **asked, extra_body={"truncate_prompt_tokens": 100, "return_token_ids": True}
    )  # type: ignore[call-overload]
    assert cut.usage is not None and cut.usage.prompt_tokens == 100 and cut.usage.completion_tokens == 4
    template = tokenizer.apply_chat_template(long_chat, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert (cut.model_extra or {})["prompt_token_ids"] == template["input_ids"][-100:]  # the end, where it answers
    prompt = "Once upon a time there was a small village"
    echoed = (
        client(platform)
        .completions.create(
            model=TINY_MODEL, prompt=prompt, max_tokens=2, echo=True, extra_body={"truncate_prompt_tokens": 3}
        )
        .choices[0]
    )
    kept = tokenizer.decode(tokenizer.encode(prompt, add_special_tokens=False)[-3:])
    assert kept and prompt.endswith(kept) and echoed.text.startswith(kept) and not echoed.text.startswith(prompt)
    with pytest.raises(BadRequestError) as err:
        client(platform).chat.completions.create(**asked, extra_body={"truncate_prompt_tokens": 5000})  # type: ignore[call-overload]
    assert err.value.body["param"] == "truncate_prompt_tokens"  # type: ignore[index]


def test_a_repetition_penalty_changes_a_greedy_answer_that_repeats(platform: Platform) -> None:
    def greedy(**options: object) -> str:
        completion = client(platform).completions.create(
            model=TINY_MODEL, prompt="Once upon a time", max_tokens=32, temperature=0, **options
        )
        return completion.choices[0].text

    plain = greedy()
    assert greedy(extra_body={"repetition_penalty": 1.0}) == plain
    # the tiny random model repeats tokens, which the penalty punishes
    assert len(set(greedy(extra_body={"repetition_penalty": 2.0}).split())) > len(set(plain.split()))


def test_min_tokens_above_max_tokens_or_out_of_range_options_are_400s_naming_them(platform: Platform) -> None:
    for options, param in (
        ({"min_tokens": 10, "max_tokens": 5}, "min_tokens"),
        ({"max_completion_tokens": 5, "min_tokens": 10}, "max_completion_tokens"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
    ):
        response = httpx.post(
            f"{platform.base_url}/v1/chat/completions",
            headers=platform.auth,
            json={"model": TINY_MODEL, "messages": QUESTION} | options,
            timeout=30,
        )
        assert response.status_code == 400, options
        assert response.json()["error"]["param"] == param and response.json()["error"]["code"] == "invalid_value"


def test_structured_outputs_hold_the_answer_to_a_choice_a_regex_or_a_grammar(platform: Platform) -> None:
    yes_no = {"structured_outputs": {"choice": ["yes", "no"]}}
    for seed in (1, 2, 3):  # sampled: any answer, but only one of the choices
        assert answer(platform, temperature=1.5, seed=seed, extra_body=yes_no)[0] in ("yes", "no")
    phone = re.compile(r"\+33 [1-9]( \d\d){4}")
    text, _, finish = answer(
        platform, temperature=1.0, seed=4, extra_body={"structured_outputs": {"regex": phone.pattern}}
    )
    assert phone.fullmatch(text) and finish == "stop", text
    # a grammar, on the plain completions route and streamed
    grammar = 'root ::= city " is in " country\ncity ::= "Paris" | "Rome"\ncountry ::= "France" | "Italy"'
    stream = client(platform).completions.create(
        model=DEFAULT_MODEL,
        prompt="Name a capital city:",
        max_tokens=16,
        stream=True,
        extra_body={"structured_outputs": {"grammar": grammar}},
    )
    streamed = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert re.fullmatch(r"(Paris|Rome) is in (France|Italy)", streamed), streamed


def test_a_structured_output_the_engine_cannot_compile_or_given_wrong_is_a_400_naming_it(platform: Platform) -> None:
    for form, status in (({"regex": "([a-z"}, 400), ({"grammar": "root ::= ("}, 400), ({"json": {}}, 400)):
        response = httpx.post(
            f"{platform.base_url}/v1/chat/completions",
            headers=platform.auth,
            json={"model": TINY_MODEL, "messages": QUESTION, "max_tokens": 4, "structured_outputs": form},
            timeout=60,
        )
        assert response.status_code == status, response.text
        assert response.json()["error"]["param"] == "structured_outputs", response.text


def test_continue_final_message_continues_a_prefilled_answer_as_vllms_server_does(platform: Platform) -> None:
    prefill = [*QUESTION, {"role": "assistant", "content": "The capital of France is"}]
    ending = {"continue_final_message": True, "add_generation_prompt": False}  # as vLLM's docs send them
    for extra in (ending, {"continue_final_message": True}):  # unset, add_generation_prompt gives way
        continued = client(platform).chat.completions.create(
            model=DEFAULT_MODEL, messages=prefill, max_tokens=4, temperature=0, extra_body=extra
        )
        # only what the model adds: the prefill's own sentence, finished
        assert (continued.choices[0].message.content or "").startswith(" Paris")
    # with vLLM's echo, the content begins with the prefill: the whole sentence, streamed and not
    echoed = {"model": DEFAULT_MODEL, "messages": prefill, "max_tokens": 4, "temperature": 0}
    echoed["extra_body"] = ending | {"echo": True}
    whole = client(platform).chat.completions.create(**echoed)  # type: ignore[call-overload]
    assert whole.choices[0].message.content == "The capital of France is" + continued.choices[0].message.content
    stream = client(platform).chat.completions.create(stream=True, **echoed)  # type: ignore[call-overload]
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == whole.choices[0].message.content
    # as history, the same turn is answered after, in a turn of the model's own
    after = client(platform).chat.completions.create(model=DEFAULT_MODEL, messages=prefill, max_tokens=4, temperature=0)
    assert not (after.choices[0].message.content or "").startswith(" Paris")
    # the prompt then ends without the template's opening of a new assistant turn: fewer tokens
    assert continued.usage is not None and after.usage is not None
    assert continued.usage.prompt_tokens < after.usage.prompt_tokens
    with pytest.raises(BadRequestError) as refused:
        client(platform).chat.completions.create(
            model=DEFAULT_MODEL,
            messages=prefill,
            max_tokens=4,
            extra_body={"continue_final_message": True, "add_generation_prompt": True},
        )
    assert refused.value.body["param"] == "continue_final_message"  # type: ignore[index]


def test_documents_reach_a_template_that_reads_them_and_are_refused_by_one_that_does_not(platform: Platform) -> None:
    """vLLM's documents (retrieval-augmented generation): the tiny model's template lists them in a system turn, as
    Granite's and Command R's do; the prompt the model read holds them. SmolLM2's template reads none: a 400 rather
    than documents dropped unseen. A document is screened like a turn."""
    tokenizer = AutoTokenizer.from_pretrained(platform.models_dir / TINY_MODEL)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    documents = [{"title": "France", "text": "Paris is the capital of France."}]
    asked = {"messages": messages, "max_tokens": 2, "temperature": 0}
    answer = client(platform).chat.completions.create(
        model=TINY_MODEL, **asked, extra_body={"documents": documents, "return_token_ids": True}
    )
    prompt_ids = (answer.model_extra or {})["prompt_token_ids"]
    template = tokenizer.apply_chat_template(messages, documents=documents, add_generation_prompt=True, tokenize=False)
    assert "[1] France: Paris is the capital of France." in template
    assert tokenizer.decode(prompt_ids) == template
    with pytest.raises(BadRequestError) as err:
        client(platform).chat.completions.create(model=DEFAULT_MODEL, **asked, extra_body={"documents": documents})
    assert err.value.body["param"] == "documents"  # type: ignore[index]
    with pytest.raises(BadRequestError) as err:  # the safety stage's rules: a secret in a retrieved document
        client(platform).chat.completions.create(
            model=TINY_MODEL,
            **asked,
            extra_body={"documents": [{"text": SECRET_PROMPT}]},
        )
    assert err.value.body["code"] == "content_policy_violation" and "secrets" in err.value.body["message"]  # type: ignore[index]
