"""The ingress's translation between OpenAI's API and the platform's events, with events from a plain list."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from pydantic import ValidationError

from services.ingress.protocol import ChatCompletionRequest, CompletionRequest, tool_error, unsupported_option
from services.ingress.serving import (
    ApiError,
    ReleaseGate,
    Submission,
    chat_completion,
    choice_requests,
    collect,
    failure_error,
    merged,
    stream_sse,
    text_completion,
    text_only_chunk_writer,
    to_completion_requested,
    usage_of,
    without_reasoning,
    without_repeats,
)
from shared.contracts import (
    CompletionFinished,
    CompletionRequested,
    FunctionCall,
    GenerationFailed,
    PromptCleared,
    ReplyEvent,
    ResponseFormat,
    TokenLogprob,
    TokensGenerated,
    ToolCall,
    ToolCallPiece,
    Usage,
    utc_now,
)

USAGE = Usage(prompt_tokens=5, completion_tokens=3, total_tokens=8)


async def events_of(*events: ReplyEvent) -> AsyncIterator[ReplyEvent]:
    for e in events:
        yield e


async def timing_out() -> AsyncIterator[ReplyEvent]:
    yield TokensGenerated(request_id="r", sequence=0, text="a", token_count=1)
    raise TimeoutError


def parse(lines: list[str]) -> list[object]:
    assert all(line.startswith("data: ") and line.endswith("\n\n") for line in lines)
    return [line[6:-2] if line[6:-2] == "[DONE]" else json.loads(line[6:-2]) for line in lines]


async def test_stream_is_openai_chunk_sequence_with_usage_and_done() -> None:
    events = events_of(
        TokensGenerated(request_id="r", sequence=0, text="Par", token_count=2),
        TokensGenerated(request_id="r", sequence=1, text="is", token_count=1),
        CompletionFinished(
            request_id="r", sequence=2, model="m", text="Paris", finish_reason="stop", usage=USAGE, variant="int8"
        ),
    )
    out = parse([line async for line in stream_sse("r", "m", True, merged([events]))])
    assert out[-1] == "[DONE]"
    role, first, second, final, usage = out[:-1]
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert role["choices"][0]["finish_reason"] is None
    assert [first["choices"][0]["delta"]["content"], second["choices"][0]["delta"]["content"]] == ["Par", "is"]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == [] and usage["usage"] == USAGE.model_dump(
        exclude={"cached_prompt_tokens", "reasoning_tokens"}
    ) | {"prompt_tokens_details": None, "completion_tokens_details": None}
    # the variant that generated the text is known once it finished: the last two chunks name it, the others do not
    assert final["system_fingerprint"] == usage["system_fingerprint"] == "int8"
    assert all("system_fingerprint" not in c for c in (role, first, second))


@pytest.mark.parametrize("kind", ["chat", "text"])
@pytest.mark.parametrize("text", ["", "Paris", 'a "quoted" \\ back\nslash\t', "é ü 中文 😀", "\u2028\x00\x1f</script>"])
def test_chunks_of_text_are_written_byte_for_byte_as_the_response_models_write_them(kind: str, text: str) -> None:
    from services.ingress.serving import _chat_chunk, _text_chunk

    request_id, model = 'chatcmpl-"7"', "org/model\\v2"  # characters JSON escapes
    by_model = _chat_chunk if kind == "chat" else _text_chunk
    write = text_only_chunk_writer(request_id, 1764900000, model, kind)  # type: ignore[arg-type]
    for index in (0, 3):
        assert write(text, index) == by_model(request_id, 1764900000, model, text, None, index)


@pytest.mark.parametrize("text", ["", "Hm, 2 < 3", "é 中文 \u2028"])
def test_chunks_of_reasoning_are_written_byte_for_byte_as_the_response_models_write_them(text: str) -> None:
    from services.ingress.serving import _chat_chunk

    write = text_only_chunk_writer("r", 1764900000, "m", "chat", key="reasoning")
    assert write(text, 2) == _chat_chunk("r", 1764900000, "m", None, None, 2, reasoning=text)


def thought(
    sequence: int, reasoning: str, reasoning_offset: int, text: str = "", text_offset: int = 0
) -> TokensGenerated:
    return TokensGenerated(
        request_id="r",
        sequence=sequence,
        text=text,
        text_offset=text_offset,
        reasoning=reasoning,
        reasoning_offset=reasoning_offset,
        token_count=1,
    )


REASONED = CompletionFinished(
    request_id="r",
    sequence=9,
    model="m",
    text="Four.",
    reasoning="Two and two make four.",
    finish_reason="stop",
    usage=Usage(prompt_tokens=5, completion_tokens=12, total_tokens=17, reasoning_tokens=7),
)


async def test_reasoning_streams_in_its_own_deltas_each_piece_once_and_counts_in_usage() -> None:
    # a worker died after two deltas; the one that took over streams the output again from the start
    events = [
        thought(0, "Two and ", 0),
        thought(1, "two make", len("Two and ")),
        thought(0, "Two and two make four.", 0),
        thought(1, "", len("Two and two make four."), text="Four."),
        REASONED,
    ]
    chunks = parse([line async for line in stream_sse("r", "m", True, merged([without_repeats(events_of(*events))]))])
    deltas = [c["choices"][0]["delta"] for c in chunks[1:-3]]  # type: ignore[index]
    assert deltas == [
        {"reasoning": "Two and "},
        {"reasoning": "two make"},
        {"reasoning": " four."},
        {"content": "Four."},
    ]
    assert chunks[-2]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 7}  # type: ignore[index]
    whole = await collect("r", "m", merged([events_of(REASONED)]))
    assert (whole.choices[0].message.reasoning, whole.choices[0].message.content) == ("Two and two make four.", "Four.")
    assert whole.usage.completion_tokens_details is not None
    assert whole.usage.completion_tokens_details.reasoning_tokens == 7


async def test_without_reasoning_the_thinking_is_left_out_and_its_tokens_still_count() -> None:
    events = [thought(0, "Two and two", 0), thought(1, " make four.", 11, text="Four."), REASONED]
    chunks = parse([line async for line in stream_sse("r", "m", True, merged([without_reasoning(events_of(*events))]))])
    assert [c["choices"][0]["delta"] for c in chunks[1:-3]] == [{"content": "Four."}]  # type: ignore[index]
    whole = await collect("r", "m", merged([without_reasoning(events_of(REASONED))]))
    assert (whole.choices[0].message.reasoning, whole.choices[0].message.content) == (None, "Four.")
    assert whole.usage.completion_tokens_details is not None
    assert whole.usage.completion_tokens_details.reasoning_tokens == 7


async def test_stream_without_include_usage_has_no_usage_chunk() -> None:
    events = events_of(
        CompletionFinished(request_id="r", sequence=0, model="m", text="", finish_reason="length", usage=USAGE)
    )
    out = parse([line async for line in stream_sse("r", "m", False, merged([events]))])
    assert all("usage" not in c for c in out[:-1])


async def test_failures_and_deadlines_mid_stream_end_with_an_error_then_done() -> None:
    failed = events_of(GenerationFailed(request_id="r", sequence=0, code="context_length_exceeded", message="too long"))
    out = parse([line async for line in stream_sse("r", "m", False, merged([failed]))])
    assert out[-2]["error"]["code"] == "context_length_exceeded" and out[-1] == "[DONE]"
    out = parse([line async for line in stream_sse("r", "m", False, merged([timing_out()]))])
    assert out[-2]["error"]["code"] == "deadline_exceeded" and out[-1] == "[DONE]"


async def test_collect_maps_failures_to_http_statuses() -> None:
    done = await collect(
        "r",
        "m",
        merged(
            [
                events_of(
                    CompletionFinished(
                        request_id="r", sequence=0, model="m", text="hi", finish_reason="stop", usage=USAGE
                    )
                )
            ]
        ),
    )
    assert done.choices[0].message.content == "hi" and done.usage.total_tokens == 8
    with pytest.raises(ApiError) as err:
        await collect(
            "r",
            "m",
            merged(
                [
                    events_of(
                        GenerationFailed(request_id="r", sequence=0, code="context_length_exceeded", message="too long")
                    )
                ]
            ),
        )
    assert err.value.status == 400
    with pytest.raises(ApiError) as err:
        await collect("r", "m", merged([timing_out()]))
    assert err.value.status == 504


def finished(text: str, prompt: int = 5, completion: int = 3, request_id: str = "r") -> CompletionFinished:
    usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
    return CompletionFinished(
        request_id=request_id, sequence=1, model="m", text=text, finish_reason="stop", usage=usage
    )


def test_each_choice_is_a_request_of_its_own_with_vllms_seed_for_it() -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "a"}]}
    sub = Submission("chatcmpl-1", "t", utc_now(), {}, 77)
    seeded = to_completion_requested(ChatCompletionRequest.model_validate(chat | {"seed": 40, "n": 3}), sub)
    choices = choice_requests(seeded, 3)
    assert [c.request_id for c in choices] == ["chatcmpl-1-0", "chatcmpl-1-1", "chatcmpl-1-2"]
    assert {c.choice_of for c in choices} == {"chatcmpl-1"} and seeded.choice_of is None
    assert [c.sampling.seed for c in choices] == [40, 41, 42]
    assert all(c.messages == seeded.messages and c.sampling.max_tokens == 77 for c in choices)
    assert choice_requests(seeded, 1) == [seeded]  # one choice keeps the request's own id
    top = seeded.model_copy(update={"sampling": seeded.sampling.model_copy(update={"seed": 2**63 - 1})})
    assert [c.sampling.seed for c in choice_requests(top, 2)] == [2**63 - 1, -(2**63)]  # still a 64-bit seed
    unseeded = to_completion_requested(ChatCompletionRequest.model_validate(chat | {"n": 2}), sub)
    assert [c.sampling.seed for c in choice_requests(unseeded, 2)] == [None, None]


def test_vllms_stop_string_bad_words_and_allowed_tokens_reach_the_worker() -> None:
    sub = Submission("chatcmpl-1", "t", utc_now(), {}, 16)
    options = {"include_stop_str_in_output": True, "bad_words": ["Paris"], "allowed_token_ids": [5, 7]}
    sampling = to_completion_requested(ChatCompletionRequest.model_validate(CHAT | options), sub).sampling
    assert (sampling.include_stop_str_in_output, sampling.bad_words, sampling.allowed_token_ids) == (
        True,
        ["Paris"],
        [5, 7],
    )
    plain = to_completion_requested(CompletionRequest.model_validate(TEXT), sub).sampling
    assert (plain.include_stop_str_in_output, plain.bad_words, plain.allowed_token_ids) == (False, [], None)
    for refused in ({"allowed_token_ids": []}, {"bad_words": [""]}, {"allowed_token_ids": [-1]}):
        with pytest.raises(ValidationError, match=next(iter(refused))):
            ChatCompletionRequest.model_validate(CHAT | refused)


def test_how_the_prompt_ends_reaches_the_worker_as_vllms_server_takes_it() -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    sub = Submission("chatcmpl-1", "t", utc_now(), {}, 16)

    def ending(**body: object) -> tuple[bool, bool]:
        made = to_completion_requested(ChatCompletionRequest.model_validate(chat | body), sub)
        return made.add_generation_prompt, made.continue_final_message

    assert ending() == (True, False)
    assert ending(add_generation_prompt=False) == (False, False)
    assert ending(continue_final_message=True, add_generation_prompt=False) == (False, True)
    assert ending(continue_final_message=True) == (True, True)  # the worker's template call lets continuing win
    with pytest.raises(ValidationError, match="not with add_generation_prompt true"):
        ChatCompletionRequest.model_validate(chat | {"continue_final_message": True, "add_generation_prompt": True})


async def test_a_chat_echo_puts_the_last_assistant_message_first_streamed_and_not() -> None:
    final = finished(" Paris.")
    whole = chat_completion("r", "m", [final], echoes=["The capital is"])
    assert whole.choices[0].message.content == "The capital is Paris."
    events = events_of((0, TokensGenerated(request_id="r", sequence=0, text=" Paris.", token_count=2)), (0, final))
    chunks = parse([line async for line in stream_sse("r", "m", False, events, echoes=["The capital is"])])
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]  # type: ignore[index]
    # the role, then the echo, as vLLM's server sends them, then the model's text
    assert deltas[:3] == [{"role": "assistant", "content": ""}, {"content": "The capital is"}, {"content": " Paris."}]


def test_max_tokens_is_cut_to_the_models_context() -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "a"}]}

    def max_tokens(max_model_len: int | None, **body: object) -> int:
        sub = Submission("chatcmpl-1", "t", utc_now(), {}, 512, max_model_len=max_model_len)
        return to_completion_requested(ChatCompletionRequest.model_validate(chat | body), sub).sampling.max_tokens

    # no model writes more than its context, so more is neither charged, batched nor forecast
    assert max_tokens(2048, max_tokens=1_000_000) == 2048
    assert max_tokens(2048, max_completion_tokens=1_000_000) == 2048
    assert max_tokens(100) == 100  # the ingress's default too
    assert max_tokens(2048, max_tokens=30) == 30 and max_tokens(None, max_tokens=1_000_000) == 1_000_000
    assert max_tokens(100, max_tokens=500, min_tokens=300) == 300  # never below min_tokens, which the worker checks


def test_a_prompt_list_makes_n_choices_of_each_prompt_in_openais_order() -> None:
    body = CompletionRequest.model_validate({"model": "m", "prompt": ["one", "two"], "n": 2, "seed": 7})
    sub = Submission("cmpl-1", "t", utc_now(), {}, 16)
    choices = choice_requests(to_completion_requested(body, sub), body.n, body.prompts())
    assert [(c.request_id, c.prompt, c.sampling.seed) for c in choices] == [
        ("cmpl-1-0", "one", 7),
        ("cmpl-1-1", "one", 8),
        ("cmpl-1-2", "two", 7),  # as vLLM seeds each prompt's choices
        ("cmpl-1-3", "two", 8),
    ]
    # the review queue groups the choices that share a prompt, and only those
    assert [c.choice_of for c in choices] == ["cmpl-1-p0", "cmpl-1-p0", "cmpl-1-p1", "cmpl-1-p1"]
    single = CompletionRequest.model_validate({"model": "m", "prompt": ["one", "two"]})
    alone = choice_requests(to_completion_requested(single, sub), 1, single.prompts())
    assert [(c.request_id, c.prompt, c.choice_of) for c in alone] == [
        ("cmpl-1-0", "one", None),
        ("cmpl-1-1", "two", None),
    ]
    # a list of one prompt is served as the prompt alone
    listed = CompletionRequest.model_validate({"model": "m", "prompt": ["one"]})
    (alone_listed,) = choice_requests(to_completion_requested(listed, sub), 1, listed.prompts())
    assert (alone_listed.request_id, alone_listed.prompt, alone_listed.choice_of) == ("cmpl-1", "one", None)


@pytest.mark.parametrize(
    ("prompt", "n", "says"),
    [
        ([[1, 2]] * 65, 2, "65 prompts of n=2 choices each make 130 choices; at most 128"),
        (["a"] * 65, 2, "65 prompts of n=2 choices each make 130 choices; at most 128"),
        (["a"] * 129, 1, "at most 128"),
        (["a", ""], 1, "at least 1 character"),
    ],
)
def test_prompt_lists_ferry_cannot_serve_are_refused_with_the_reason(prompt: object, n: int, says: str) -> None:
    with pytest.raises(ValidationError) as err:
        CompletionRequest.model_validate({"model": "m", "prompt": prompt, "n": n})
    assert says in str(err.value) and err.value.errors()[0]["loc"][0] == "prompt"


def test_each_prompt_of_a_list_counts_once_in_the_usage_and_is_echoed_before_its_own_choices() -> None:
    finals = [finished("a", prompt=3), finished("b", prompt=3), finished("c", prompt=8), finished("d", prompt=8)]
    text = text_completion("r", "m", finals, echoes=["one ", "one ", "two ", "two "], prompt_of=[0, 0, 1, 1])
    assert [(c.index, c.text) for c in text.choices] == [(0, "one a"), (1, "one b"), (2, "two c"), (3, "two d")]
    assert (text.usage.prompt_tokens, text.usage.completion_tokens) == (3 + 8, 4 * 3)
    # a usage over the choices that ran (others came from the cache) counts each of their prompts once
    assert usage_of([finals[3], finals[1], finals[2]], [1, 0, 1]).prompt_tokens == 11


async def test_a_prompt_lists_stream_echoes_each_prompt_and_sums_their_usage() -> None:
    events = events_of((1, finished("b", prompt=8, request_id="r-1")), (0, finished("a", prompt=3, request_id="r-0")))
    stream = stream_sse("r", "m", True, events, "text", ["one ", "two "], choices=2, prompt_of=[0, 1])
    out = parse([line async for line in stream])
    assert [(c["choices"][0]["index"], c["choices"][0]["text"]) for c in out[:2]] == [(0, "one "), (1, "two ")]
    assert out[-2]["usage"]["prompt_tokens"] == 11 and out[-1] == "[DONE]"


async def test_several_choices_stream_interleaved_with_their_indexes_and_one_usage() -> None:
    async def first() -> AsyncIterator[ReplyEvent]:
        yield TokensGenerated(request_id="r-0", sequence=0, text="Par", token_count=1)
        await asyncio.sleep(0.02)
        yield TokensGenerated(request_id="r-0", sequence=1, text="is", token_count=1)
        yield finished("Paris", completion=2, request_id="r-0")

    async def second() -> AsyncIterator[ReplyEvent]:
        await asyncio.sleep(0.01)
        yield TokensGenerated(request_id="r-1", sequence=0, text="Lyon", token_count=1)
        yield finished("Lyon", completion=1, request_id="r-1")

    out = parse([line async for line in stream_sse("r", "m", True, merged([first(), second()]), choices=2)])
    assert out[-1] == "[DONE]"
    chunks = out[:-1]
    assert all(c["id"] == "r" for c in chunks)
    assert [c["choices"][0]["delta"] for c in chunks[:2]] == [{"role": "assistant", "content": ""}] * 2
    assert [c["choices"][0]["index"] for c in chunks[:2]] == [0, 1]
    content = [(c["choices"][0]["index"], c["choices"][0]["delta"].get("content")) for c in chunks[2:-1]]
    assert content == [(0, "Par"), (1, "Lyon"), (1, None), (0, "is"), (0, None)]  # as the text arrived
    finishes = [(c["choices"][0]["index"], c["choices"][0]["finish_reason"]) for c in chunks[2:-1]]
    assert [f for f in finishes if f[1]] == [(1, "stop"), (0, "stop")]
    # usage comes once, after the last choice finished: the prompt once, the completions added up
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "total_tokens": 8,
        "prompt_tokens_details": None,  # workers before cached_prompt_tokens do not say
        "completion_tokens_details": None,  # not a reasoning model
    }


def test_the_usage_says_how_much_of_the_prompt_came_from_the_prefix_cache() -> None:
    def with_cached(f: CompletionFinished, cached: int) -> CompletionFinished:
        return f.model_copy(update={"usage": f.usage.model_copy(update={"cached_prompt_tokens": cached})})

    # choices share their prompt, which counts once: so does its cached part (the first choice's figure)
    usage = usage_of([with_cached(finished("a", prompt=40), 32), with_cached(finished("b", prompt=40), 0)])
    assert (usage.prompt_tokens, usage.completion_tokens) == (40, 6)
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 32
    assert usage_of([with_cached(finished("a"), 0)]).model_dump()["prompt_tokens_details"] == {"cached_tokens": 0}


async def test_several_choices_collect_in_index_order_and_fail_together() -> None:
    events = events_of((1, finished("b", completion=4)), (0, finished("a", completion=2)))
    done = await collect("r", "m", events, choices=2)
    assert [(c.index, c.message.content) for c in done.choices] == [(0, "a"), (1, "b")]
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (5, 6, 11)
    text = text_completion("r", "m", [finished("a"), finished("b")], echoes=["Q: ", "Q: "])
    assert [(c.index, c.text) for c in text.choices] == [(0, "Q: a"), (1, "Q: b")]
    failed = GenerationFailed(request_id="r-1", sequence=0, code="context_length_exceeded", message="too long")
    with pytest.raises(ApiError) as err:
        await collect("r", "m", events_of((0, finished("a")), (1, failed)), choices=2)
    assert err.value.status == 400


async def test_merged_streams_end_at_the_first_deadline() -> None:
    async def slow() -> AsyncIterator[ReplyEvent]:
        await asyncio.sleep(10)
        yield finished("never")

    with pytest.raises(TimeoutError):
        [e async for e in merged([slow(), timing_out()])]


def test_openai_request_maps_to_the_kafka_contract() -> None:
    api = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "stream": True,
            "max_completion_tokens": 9,
            "max_tokens": 99,
            "temperature": 0,
            "stop": "\n",
            "seed": 3,
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ],
        }
    )
    deadline = utc_now() + timedelta(seconds=5)
    req = to_completion_requested(api, Submission("r", "replies.i", deadline, {"traceparent": "x"}, 512))
    assert req.sampling.max_tokens == 9 and req.sampling.temperature == 0 and req.sampling.stop == ["\n"]
    assert req.sampling.seed == 3 and req.stream and req.deadline_at == deadline
    assert [(m.role, m.content) for m in req.messages] == [("system", "be brief"), ("user", "ab")]
    assert req.trace_context == {"traceparent": "x"} and req.reply_topic == "replies.i"
    assert req.prompt_screening == "before"
    beside = Submission("r", "replies.i", deadline, {}, 512, prompt_screening="beside")
    assert to_completion_requested(api, beside).prompt_screening == "beside"


@pytest.mark.parametrize(
    ("fields", "enable_thinking", "effort"),
    [
        ({}, None, None),  # the template's default
        ({"reasoning_effort": "none"}, False, "none"),
        ({"reasoning_effort": "low"}, True, "low"),
        ({"chat_template_kwargs": {"enable_thinking": False}}, False, None),
        ({"chat_template_kwargs": {"thinking": True}}, True, None),
        ({"reasoning_effort": "high", "chat_template_kwargs": {"enable_thinking": False}}, False, "high"),
    ],
)
def test_the_thinking_switches_reach_the_kafka_contract_as_vllm_reads_them(
    fields: dict, enable_thinking: bool | None, effort: str | None
) -> None:
    req = to_completion_requested(
        ChatCompletionRequest.model_validate(CHAT | fields), Submission("r", "t", utc_now(), {}, 77)
    )
    assert (req.enable_thinking, req.reasoning_effort) == (enable_thinking, effort)


def test_a_thinking_budget_reaches_the_kafka_contract_and_a_negative_one_is_refused() -> None:
    sub = Submission("r", "t", utc_now(), {}, 77)
    budgeted = ChatCompletionRequest.model_validate(CHAT | {"thinking_token_budget": 32})
    assert to_completion_requested(budgeted, sub).thinking_token_budget == 32
    assert to_completion_requested(ChatCompletionRequest.model_validate(CHAT), sub).thinking_token_budget is None
    with pytest.raises(ValidationError, match="thinking_token_budget"):
        ChatCompletionRequest.model_validate(CHAT | {"thinking_token_budget": -1})


def test_an_assistant_turn_s_reasoning_reaches_the_kafka_contract_under_either_name() -> None:
    turns = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b", "reasoning": "think b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d", "reasoning_content": "think d"},
    ]
    req = to_completion_requested(
        ChatCompletionRequest.model_validate(CHAT | {"messages": turns}), Submission("r", "t", utc_now(), {}, 77)
    )
    assert [m.reasoning for m in req.messages] == [None, "think b", None, "think d"]
    with pytest.raises(ValidationError, match="only an assistant turn has reasoning"):
        ChatCompletionRequest.model_validate(CHAT | {"messages": [{"role": "user", "content": "a", "reasoning": "x"}]})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):  # other template variables
        ChatCompletionRequest.model_validate(CHAT | {"chat_template_kwargs": {"add_generation_prompt": False}})


def test_an_assistant_turn_that_refused_is_sent_back_as_openai_gave_it() -> None:
    refused = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    turns = [{"role": "user", "content": "a"}, refused, {"role": "user", "content": "b"}]
    req = to_completion_requested(
        ChatCompletionRequest.model_validate(CHAT | {"messages": turns}), Submission("r", "t", utc_now(), {}, 77)
    )
    assert req.messages[1].content == "I can't help with that."  # the model reads what it said
    with pytest.raises(ValidationError, match="null only in an assistant turn with tool_calls or a refusal"):
        ChatCompletionRequest.model_validate(CHAT | {"messages": [{"role": "assistant", "content": None}]})
    with pytest.raises(ValidationError, match="only an assistant turn has refusal"):
        ChatCompletionRequest.model_validate(CHAT | {"messages": [{"role": "user", "content": "a", "refusal": "x"}]})


def test_penalties_reach_the_kafka_contract_and_default_to_off() -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "a"}]}
    sub = Submission("r", "t", utc_now(), {}, 77)
    penalised = ChatCompletionRequest.model_validate(chat | {"presence_penalty": 0.5, "frequency_penalty": -1.5})
    sampling = to_completion_requested(penalised, sub).sampling
    assert (sampling.presence_penalty, sampling.frequency_penalty) == (0.5, -1.5)
    plain = to_completion_requested(ChatCompletionRequest.model_validate(chat), sub).sampling
    assert (plain.presence_penalty, plain.frequency_penalty) == (0.0, 0.0)


CHAT = {"model": "m", "messages": [{"role": "user", "content": "a"}]}
TEXT = {"model": "m", "prompt": "a"}
SCHEMA = {"type": "object", "properties": {"color": {"enum": ["red", "green"]}}, "required": ["color"]}


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_a_response_format_reaches_the_kafka_contract_on_both_routes(route: str) -> None:
    body = CHAT if route == "chat" else {"model": "m", "prompt": "a"}
    parse = ChatCompletionRequest.model_validate if route == "chat" else CompletionRequest.model_validate
    sub = Submission("r", "t", utc_now(), {}, 77)

    def sent(response_format: object) -> object:
        api = parse(body | {"response_format": response_format})
        assert unsupported_option(api) is None
        return to_completion_requested(api, sub).sampling.response_format

    assert sent(None) is None and sent({"type": "text"}) is None
    assert sent({"type": "json_object"}) == ResponseFormat(type="json_object")
    named = {"name": "color", "description": "a color", "strict": True, "schema": SCHEMA}
    strict = ResponseFormat(type="json_schema", json_schema=SCHEMA, strict=True)
    assert sent({"type": "json_schema", "json_schema": named}) == strict
    named.pop("strict")
    assert sent({"type": "json_schema", "json_schema": named}) == ResponseFormat(type="json_schema", json_schema=SCHEMA)


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_schema", "json_schema": {"name": "x"}},  # no schema
        {"type": "json_schema", "json_schema": {"name": "has space", "schema": SCHEMA}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": "not an object"}},
        {"type": "json_schema"},
        {"type": "yaml"},
    ],
)
def test_a_malformed_response_format_is_a_validation_error(response_format: object) -> None:
    with pytest.raises(ValidationError, match="response_format"):
        ChatCompletionRequest.model_validate(CHAT | {"response_format": response_format})


def test_a_schema_the_worker_refused_is_a_400_naming_response_format() -> None:
    refused = GenerationFailed(
        request_id="r",
        sequence=0,
        code="invalid_request",
        message="response_format: Grammar error: Invalid type: nonsense",
        param="response_format",
    )
    error = failure_error(refused)
    assert error.status == 400
    assert error.body()["error"] == {
        "message": "response_format: Grammar error: Invalid type: nonsense",
        "type": "invalid_request_error",
        "param": "response_format",
        "code": "invalid_request",
    }


@pytest.mark.parametrize(
    "harmless",
    [
        {},
        {"tools": [], "tool_choice": "none", "functions": [], "function_call": "none"},
        {"response_format": {"type": "text"}, "logprobs": False, "top_logprobs": 0, "logit_bias": {}},
        {"tools": None, "response_format": None, "logprobs": None, "store": True, "metadata": {"a": "b"}},
        {"modalities": ["text"], "audio": None, "web_search_options": None},
    ],
)
def test_options_at_values_that_ask_for_nothing_are_accepted(harmless: dict) -> None:
    assert unsupported_option(ChatCompletionRequest.model_validate(CHAT | harmless)) is None


@pytest.mark.parametrize(
    ("option", "neutral"),
    [
        ({"use_beam_search": True}, {"use_beam_search": False}),
        ({"length_penalty": 0.5}, {"length_penalty": 1}),
        ({"chat_template": "{{ messages }}"}, {"chat_template": None}),
    ],
)
def test_vllms_options_ferry_does_not_serve_are_refused_unless_asking_nothing(option: dict, neutral: dict) -> None:
    """Clients of vLLM's server send these in extra_body; ignored, they would get another answer than they asked for."""
    for parse, body in ((ChatCompletionRequest.model_validate, CHAT), (CompletionRequest.model_validate, TEXT)):
        refused = unsupported_option(parse(body | option))
        assert refused is not None and refused[0] == next(iter(option)) and "vLLM's server" in refused[1]
        assert unsupported_option(parse(body | neutral)) is None


def test_documents_reach_a_chats_template_and_are_refused_on_a_completion() -> None:
    documents = [{"title": "Paris", "text": "Paris is the capital of France."}]
    chat = ChatCompletionRequest.model_validate(CHAT | {"documents": documents})
    assert unsupported_option(chat) is None
    assert to_completion_requested(chat, Submission("chatcmpl-1", "t", utc_now(), {}, 16)).documents == documents
    refused = unsupported_option(CompletionRequest.model_validate(TEXT | {"documents": documents}))
    assert refused is not None and refused[0] == "documents"


@pytest.mark.parametrize(
    ("option", "param"),
    [
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"web_search_options": {}}, "web_search_options"),
    ],
)
def test_options_that_would_change_the_kind_of_answer_are_refused_by_name(option: dict, param: str) -> None:
    refused = unsupported_option(ChatCompletionRequest.model_validate(CHAT | option))
    assert refused is not None and refused[0] == param and param in refused[1]


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_a_logit_bias_reaches_the_kafka_contract_by_token_id(route: str) -> None:
    body = CHAT if route == "chat" else {"model": "m", "prompt": "a"}
    parse = ChatCompletionRequest.model_validate if route == "chat" else CompletionRequest.model_validate
    sub = Submission("r", "t", utc_now(), {}, 77)
    biased = to_completion_requested(parse(body | {"logit_bias": {"50256": -100, "7": 2.5, "0": 100}}), sub)
    assert biased.sampling.logit_bias == {50256: -100.0, 7: 2.5, 0: 100.0}
    assert to_completion_requested(parse(body), sub).sampling.logit_bias == {}
    # the record a worker reads carries the same map (JSON keys are strings)
    assert CompletionRequested.model_validate_json(biased.model_dump_json()).sampling == biased.sampling


def test_vllm_s_sampling_options_reach_the_kafka_contract_and_default_to_off() -> None:
    sub = Submission("r", "t", utc_now(), {}, 77)
    extras = {"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.2, "min_tokens": 10}
    extras |= {"ignore_eos": True, "stop_token_ids": [7, 9]}
    sampling = to_completion_requested(ChatCompletionRequest.model_validate(CHAT | extras), sub).sampling
    assert (sampling.top_k, sampling.min_p, sampling.repetition_penalty, sampling.min_tokens) == (40, 0.05, 1.2, 10)
    assert (sampling.ignore_eos, sampling.stop_token_ids) == (True, [7, 9])
    plain = to_completion_requested(ChatCompletionRequest.model_validate(CHAT), sub).sampling
    assert (plain.top_k, plain.min_p, plain.repetition_penalty, plain.min_tokens) == (0, 0.0, 1.0, 0)
    assert (plain.ignore_eos, plain.stop_token_ids) == (False, [])
    assert to_completion_requested(ChatCompletionRequest.model_validate(CHAT | {"top_k": -1}), sub).sampling.top_k == 0
    # the default max_tokens (77 here) leaves room for min_tokens
    roomy = to_completion_requested(ChatCompletionRequest.model_validate(CHAT | {"min_tokens": 100}), sub).sampling
    assert (roomy.min_tokens, roomy.max_tokens) == (100, 100)


def test_structured_outputs_reach_the_kafka_contract_as_given() -> None:
    sub = Submission("r", "t", utc_now(), {}, 77)
    for form in ({"choice": ["yes", "no"]}, {"regex": "[0-9]+"}, {"grammar": 'root ::= "a"'}):
        api = ChatCompletionRequest.model_validate(CHAT | {"structured_outputs": form})
        structured = to_completion_requested(api, sub).sampling.structured_outputs
        assert structured is not None and structured.model_dump(exclude_none=True) == form
    assert to_completion_requested(ChatCompletionRequest.model_validate(CHAT), sub).sampling.structured_outputs is None


@pytest.mark.parametrize(
    "fields",
    [
        {"structured_outputs": {}},
        {"structured_outputs": {"choice": ["a"], "regex": "a"}},
        {"structured_outputs": {"choice": ["a"], "regex": None}},
        {"structured_outputs": {"choice": []}},
        {"structured_outputs": {"choice": [""]}},
        {"structured_outputs": {"json": {"type": "object"}}},
        {"structured_outputs": {"regex": "a", "whitespace": "b"}},
        {"structured_outputs": {"regex": "a"}, "response_format": {"type": "json_object"}},
    ],
)
def test_structured_outputs_other_than_exactly_one_form_are_refused(fields: dict) -> None:
    with pytest.raises(ValidationError) as err:
        ChatCompletionRequest.model_validate(CHAT | fields)
    assert err.value.errors()[0]["loc"][0] == "structured_outputs"


def test_structured_outputs_are_not_served_with_tools_the_model_may_call() -> None:
    fields = {"tools": [WEATHER_TOOL], "structured_outputs": {"choice": ["a", "b"]}}
    assert tool_error(ChatCompletionRequest.model_validate(CHAT | fields))[0] == "structured_outputs"  # type: ignore[index]
    assert tool_error(ChatCompletionRequest.model_validate(CHAT | fields | {"tool_choice": "none"})) is None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"min_tokens": 9, "max_tokens": 8}, "min_tokens"),
        ({"min_tokens": 9, "max_completion_tokens": 8}, "max_completion_tokens"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.01}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repetition_penalty": 2.5}, "repetition_penalty"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"stop_token_ids": list(range(65))}, "stop_token_ids"),
        ({"ignore_eos": 1}, "ignore_eos"),
    ],
)
def test_vllm_s_sampling_options_out_of_range_are_refused_by_name(fields: dict, param: str) -> None:
    with pytest.raises(ValidationError) as err:
        ChatCompletionRequest.model_validate(CHAT | fields)
    assert err.value.errors()[0]["loc"][0] == param


@pytest.mark.parametrize(
    "bias",
    [
        {"abc": 1},
        {"-1": 1},
        {"1.5": 1},
        {"": 1},
        {"1": 100.5},
        {"1": -101},
        {"1": "5"},
        {str(i): 1 for i in range(1025)},
    ],
)
def test_a_logit_bias_other_than_token_ids_to_biases_within_100_is_refused(bias: dict) -> None:
    with pytest.raises(ValidationError) as err:
        ChatCompletionRequest.model_validate(CHAT | {"logit_bias": bias})
    assert err.value.errors()[0]["loc"][0] == "logit_bias"


def test_default_max_tokens_applies_when_the_client_sends_none() -> None:
    api = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "a"}]})
    req = to_completion_requested(api, Submission("r", "t", utc_now(), {}, 77))
    assert req.sampling.max_tokens == 77 and req.sampling.temperature == 1.0 and not req.stream


def test_output_screened_beside_generation_is_held_until_the_prompt_is_cleared() -> None:
    delta = TokensGenerated(request_id="r", sequence=0, text="Par", token_count=2)
    final = CompletionFinished(request_id="r", sequence=1, model="m", text="Par", finish_reason="stop", usage=USAGE)
    cleared = PromptCleared(request_id="r", by="screening")
    gate = ReleaseGate(cleared=False)
    assert gate.admit(delta) == [] and gate.admit(final) == []  # the worker answered before the safety stage
    assert gate.admit(cleared) == [delta, final]  # then everything, in order
    assert gate.admit(cleared) == []  # a redelivered verdict releases nothing twice

    gate = ReleaseGate(cleared=False)
    assert gate.admit(cleared) == [] and gate.admit(delta) == [delta]  # cleared first: the output flows as it comes

    blocked = GenerationFailed(request_id="r", sequence=0, code="content_blocked", message="the prompt was blocked")
    gate = ReleaseGate(cleared=False)
    assert gate.admit(delta) == [] and gate.admit(blocked) == [blocked]  # the failure ends it; the text never goes
    assert ReleaseGate(cleared=True).admit(delta) == [delta]  # screened before generation: nothing to hold


def test_a_retryable_failure_of_the_platform_is_a_503_with_retry_after_and_a_refusal_is_not() -> None:
    unavailable = failure_error(
        GenerationFailed(request_id="r", sequence=0, code="screening_unavailable", message="m", retryable=True)
    )
    assert (unavailable.status, unavailable.type, unavailable.code) == (
        503,
        "service_unavailable_error",
        "screening_unavailable",
    )
    assert unavailable.headers == {"Retry-After": "1"}
    blocked = failure_error(GenerationFailed(request_id="r", sequence=0, code="content_blocked", message="m"))
    assert (blocked.status, blocked.code, blocked.headers) == (400, "content_policy_violation", {})


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_tools_and_a_tool_conversation_reach_the_kafka_contract() -> None:
    api = ChatCompletionRequest.model_validate(
        CHAT
        | {
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": False,
            "messages": [
                {"role": "user", "content": "Weather in Oslo?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "content": "2 C", "tool_call_id": "call_9"},
            ],
        }
    )
    req = to_completion_requested(api, Submission("r", "replies.i", utc_now(), {}, 16))
    assert [t.name for t in req.tools] == ["get_weather"] and req.tools[0].parameters == WEATHER_TOOL["function"][
        "parameters"
    ]
    assert (req.tool_choice, req.tool_choice_function, req.parallel_tool_calls) == ("required", "get_weather", False)
    assistant, tool = req.messages[1:]
    assert assistant.content == "" and assistant.tool_calls[0].id == "call_9"
    assert (tool.role, tool.content, tool.tool_call_id) == ("tool", "2 C", "call_9")
    auto = to_completion_requested(
        ChatCompletionRequest.model_validate(CHAT | {"tools": [WEATHER_TOOL]}), Submission("r", "t", utc_now(), {}, 16)
    )
    assert (auto.tool_choice, auto.tool_choice_function, auto.parallel_tool_calls) == ("auto", None, True)


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": None},
        {"role": "tool", "content": "2 C"},  # no tool_call_id
        {"role": "user", "content": "a", "tool_call_id": "call_1"},
        {
            "role": "user",
            "content": "a",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
    ],
)
def test_a_tool_turn_out_of_place_is_a_validation_error(message: dict) -> None:
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate(CHAT | {"messages": [message]})


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
            "tool_choice",
        ),
        ({"tools": [WEATHER_TOOL, WEATHER_TOOL]}, "tools"),
        ({"tools": [WEATHER_TOOL], "logprobs": True}, "logprobs"),
        ({"tools": [WEATHER_TOOL], "response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_tools_the_model_could_not_use_are_refused_by_name(fields: dict, param: str) -> None:
    refused = tool_error(ChatCompletionRequest.model_validate(CHAT | fields))
    assert refused is not None and refused[0] == param


def test_tools_shown_with_tool_choice_none_allow_everything_else() -> None:
    fields = {
        "tools": [WEATHER_TOOL],
        "tool_choice": "none",
        "logprobs": True,
        "response_format": {"type": "json_object"},
    }
    assert tool_error(ChatCompletionRequest.model_validate(CHAT | fields)) is None


CALLS = [
    ToolCall(id="call_a", function=FunctionCall(name="get_weather", arguments='{"city": "Oslo"}')),
    ToolCall(id="call_b", function=FunctionCall(name="get_weather", arguments='{"city": "Rome"}')),
]


async def test_tool_calls_come_back_as_openai_gives_them_whole_and_streamed() -> None:
    final = CompletionFinished(
        request_id="r", sequence=0, model="m", text="", tool_calls=CALLS, finish_reason="tool_calls", usage=USAGE
    )
    message = (await collect("r", "m", merged([events_of(final)]))).choices[0]
    assert message.finish_reason == "tool_calls" and message.message.content is None
    assert message.message.tool_calls is not None
    assert [(c.id, c.type, c.function.arguments) for c in message.message.tool_calls] == [
        ("call_a", "function", '{"city": "Oslo"}'),
        ("call_b", "function", '{"city": "Rome"}'),
    ]
    out = parse([line async for line in stream_sse("r", "m", False, merged([events_of(final)]))])
    _, calls, finish, done = out
    assert calls["choices"][0]["delta"] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            },
            {
                "index": 1,
                "id": "call_b",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
            },
        ]
    }
    assert calls["choices"][0]["finish_reason"] is None
    assert finish["choices"][0]["finish_reason"] == "tool_calls" and done == "[DONE]"


def piece(sequence: int, arguments: str, offset: int, index: int = 0, text_offset: int = 0) -> TokensGenerated:
    call = CALLS[index]
    return TokensGenerated(
        request_id="r",
        sequence=sequence,
        text="",
        token_count=1,
        text_offset=text_offset,
        tool_calls=[
            ToolCallPiece(
                index=index, id=call.id, name=call.function.name, arguments=arguments, arguments_offset=offset
            )
        ],
    )


async def test_streamed_call_pieces_become_openai_s_call_deltas_and_the_final_adds_only_what_they_lacked() -> None:
    final = CompletionFinished(
        request_id="r", sequence=4, model="m", text="", tool_calls=CALLS, finish_reason="tool_calls", usage=USAGE
    )
    # a worker died after two pieces; the one that took over streams the calls again from the start
    events = [
        piece(0, "", 0),
        piece(1, '{"city": "O', 0),
        piece(0, '{"city": "Oslo"', 0),
        piece(1, "}", len('{"city": "Oslo"')),
        piece(2, '{"city": "Ro', 0, index=1),
        final,  # call_b's arguments end in it: as a response held for review and then released would
    ]
    chunks = parse([line async for line in stream_sse("r", "m", False, merged([without_repeats(events_of(*events))]))])
    deltas = [c["choices"][0]["delta"]["tool_calls"] for c in chunks[1:-2]]  # type: ignore[index]
    assert deltas == [
        [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}],
        [{"index": 0, "function": {"arguments": '{"city": "O'}}],
        [{"index": 0, "function": {"arguments": 'slo"'}}],
        [{"index": 0, "function": {"arguments": "}"}}],
        [
            {
                "index": 1,
                "id": "call_b",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Ro'},
            }
        ],
        [{"index": 1, "function": {"arguments": 'me"}'}}],
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"  # type: ignore[index]
    joined = {}
    for delta in (d for ds in deltas for d in ds):
        joined[delta["index"]] = joined.get(delta["index"], "") + delta["function"]["arguments"]
    assert joined == {0: CALLS[0].function.arguments, 1: CALLS[1].function.arguments}


async def sse_of(events: list[ReplyEvent]) -> list[dict]:
    """The stream's chunks (usage asked for), the [DONE] left out."""
    lines = [line async for line in stream_sse("r", "m", True, merged([without_repeats(events_of(*events))]))]
    return [c for c in parse(lines) if c != "[DONE]"]  # type: ignore[misc]


async def test_deltas_lost_on_the_way_leave_no_hole_the_final_brings_the_rest_in_order() -> None:
    words = ["The ", "capital ", "of ", "France."]
    tokens = [TokenLogprob(token=w, logprob=-0.5) for w in words]

    def delta(i: int) -> TokensGenerated:
        offset = sum(len(w) for w in words[:i])
        return TokensGenerated(
            request_id="r",
            sequence=i,
            text=words[i],
            token_count=1,
            text_offset=offset,
            logprobs=tokens[i : i + 1],
            token_offset=i,
        )

    final = CompletionFinished(
        request_id="r",
        sequence=4,
        model="m",
        text="".join(words),
        finish_reason="stop",
        usage=Usage(prompt_tokens=5, completion_tokens=4, total_tokens=9),
        logprobs=tokens,
    )
    # delta 1 expired in the worker's producer while the broker was away; the later ones got through
    chunks = await sse_of([delta(0), delta(2), delta(3), final])
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    contents = [c["delta"]["content"] for c in choices if c["delta"].get("content")]
    assert contents == ["The ", "capital of France."]  # without the hole: before, "The ", "of ", "France."
    assert [t["token"] for c in choices if c.get("logprobs") for t in c["logprobs"]["content"]] == words
    assert choices[-1]["finish_reason"] == "stop" and chunks[-1]["usage"]["completion_tokens"] == 4


async def test_lost_reasoning_and_call_pieces_come_whole_from_the_final() -> None:
    # the reasoning's second delta was lost: the answer after it waits for the final too
    chunks = await sse_of(
        [
            thought(0, "Two and ", 0),
            thought(2, " four.", len("Two and two make")),
            thought(3, "", len("Two and two make four."), text="Four."),
            REASONED,
        ]
    )
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning", "") for d in deltas) == "Two and two make four."
    assert "".join(d.get("content") or "" for d in deltas) == "Four."
    # the first call's second piece was lost; the second call's arrived whole
    final = CompletionFinished(
        request_id="r", sequence=4, model="m", text="", tool_calls=CALLS, finish_reason="tool_calls", usage=USAGE
    )
    chunks = await sse_of(
        [
            piece(0, "", 0),
            piece(2, 'slo"}', len('{"city": "O')),
            piece(3, CALLS[1].function.arguments, 0, index=1),
            final,
        ]
    )
    calls = [call for c in chunks if c["choices"] for call in c["choices"][0]["delta"].get("tool_calls") or []]
    joined: dict[int, str] = {}
    for call in calls:
        joined[call["index"]] = joined.get(call["index"], "") + call["function"]["arguments"]
    assert joined == {0: CALLS[0].function.arguments, 1: CALLS[1].function.arguments}
    assert [call["index"] for call in calls if "id" in call] == [0, 1]  # each call opened once, in order


async def test_prompts_of_token_ids_reach_the_contract_as_ids_and_are_echoed_as_the_text_the_worker_decoded() -> None:
    sub = Submission("cmpl-1", "t", utc_now(), {}, 16)
    one = CompletionRequest.model_validate({"model": "m", "prompt": [5, 6, 7]})
    (alone,) = choice_requests(to_completion_requested(one, sub), 1, one.prompts())
    assert (alone.prompt, alone.prompt_token_ids) == (None, [5, 6, 7])
    assert alone.prompt_tokens_estimate() == 3  # counted, not estimated from characters
    listed = CompletionRequest.model_validate({"model": "m", "prompt": [[5, 6], [7]], "n": 2})
    choices = choice_requests(to_completion_requested(listed, sub), 2, listed.prompts())
    assert [(c.prompt, c.prompt_token_ids, c.choice_of) for c in choices] == [
        (None, [5, 6], "cmpl-1-p0"),
        (None, [5, 6], "cmpl-1-p0"),
        (None, [7], "cmpl-1-p1"),
        (None, [7], "cmpl-1-p1"),
    ]
    # with echo the ingress has no text of the ids: the worker's reply brings it (prompt_text)
    final = finished(" there", prompt=2).model_copy(update={"prompt_text": "Hello"})
    assert text_completion("r", "m", [final], echoes=[None]).choices[0].text == "Hello there"
    first = TokensGenerated(request_id="r", sequence=0, text=" the", token_count=1, text_offset=0, prompt_text="Hello")
    events = [first, final.model_copy(update={"text": " the"})]
    lines = [line async for line in stream_sse("r", "m", False, merged([events_of(*events)]), "text", [None])]
    texts = [c["choices"][0]["text"] for c in parse(lines[:-1])]  # type: ignore[index]
    assert texts[:2] == ["Hello", " the"]


def test_stream_options_without_streaming_are_refused_as_openai_refuses_them() -> None:
    for request in (ChatCompletionRequest, CompletionRequest):
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "prompt": "hi"}
        with pytest.raises(ValidationError) as err:
            request.model_validate(body | {"stream_options": {"include_usage": True}})
        assert err.value.errors()[0]["loc"][0] == "stream_options"
        assert "only allowed when stream is true" in err.value.errors()[0]["msg"]
        streamed = request.model_validate(body | {"stream": True, "stream_options": {"include_usage": True}})
        assert streamed.stream_options is not None and streamed.stream_options.include_usage
        assert request.model_validate(body | {"stream_options": None}).stream_options is None  # as clients send it
