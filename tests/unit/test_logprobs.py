"""Log-probabilities from vLLM's per-position maps to the Kafka contract, and from there to OpenAI's two formats, with
redelivered text cut once. Pure logic: vLLM's Logprob objects are stood in for by a dataclass of the same fields."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from pydantic import ValidationError

from services.cache.config import DEFAULT_TTL_S
from services.cache.policy import RequestCacheOptions, TenantCachePolicy, decide
from services.ingress.protocol import ChatCompletionRequest, CompletionRequest, unsupported_option
from services.ingress.serving import (
    Submission,
    chat_completion,
    chat_logprobs,
    merged,
    stream_sse,
    text_completion,
    text_logprobs,
    to_completion_requested,
    without_repeats,
)
from services.worker.engine import EngineError, token_logprobs
from shared.contracts import (
    CompletionFinished,
    CompletionRequested,
    PromptLogprobs,
    ReplyEvent,
    SamplingParams,
    TokenLogprob,
    TokensGenerated,
    TopLogprob,
    Usage,
    utc_now,
)


@dataclass
class Logprob:
    logprob: float
    rank: int | None
    decoded_token: str | None


def test_the_alternatives_are_the_most_likely_tokens_in_rank_order() -> None:
    positions = [
        # the generated token (7) ranked 5th: it is not among the 2 most likely
        {7: Logprob(-3.0, 5, " cat"), 1: Logprob(-0.2, 1, " dog"), 2: Logprob(-1.9, 2, None)},
        # the generated token is the most likely one
        {3: Logprob(-0.1, 1, "!"), 4: Logprob(-float("inf"), 2, "?")},
    ]
    out = token_logprobs([7, 3], positions, 2, decode=lambda t: f"<{t}>")
    assert [(e.token, e.logprob) for e in out] == [(" cat", -3.0), ("!", -0.1)]
    assert [(t.token, t.logprob) for t in out[0].top_logprobs] == [(" dog", -0.2), ("<2>", -1.9)]
    assert [(t.token, t.logprob) for t in out[1].top_logprobs] == [("!", -0.1), ("?", -9999.0)]  # JSON has no -inf
    assert [e.token_id for e in out] == [7, 3] and [t.token_id for t in out[0].top_logprobs] == [1, 2]
    only = token_logprobs([3], positions[1:], 0, decode=str)
    assert only[0].top_logprobs == []
    with pytest.raises(EngineError):
        token_logprobs([9], [{3: Logprob(-0.1, 1, "!")}], 1, decode=str)


ENTRIES = [
    TokenLogprob(token="Par", logprob=-0.5, top_logprobs=[TopLogprob(token="Par", logprob=-0.5)]),
    TokenLogprob(token="ís", logprob=-1.5, top_logprobs=[TopLogprob(token="is", logprob=-0.9)]),
]


def test_the_chat_format_has_bytes_and_the_text_format_has_offsets() -> None:
    chat = chat_logprobs(ENTRIES)
    assert chat is not None and chat.content is not None
    assert [(c.token, c.logprob, c.bytes) for c in chat.content] == [
        ("Par", -0.5, [80, 97, 114]),
        ("ís", -1.5, [195, 173, 115]),
    ]
    assert [t.token for t in chat.content[1].top_logprobs] == ["is"]
    text = text_logprobs(ENTRIES, start=4)
    assert text is not None
    assert text.tokens == ["Par", "ís"] and text.token_logprobs == [-0.5, -1.5]
    assert text.top_logprobs == [{"Par": -0.5}, {"is": -0.9}] and text.text_offset == [4, 7]
    assert chat_logprobs(None) is None and text_logprobs(None, 0) is None


PROMPT = PromptLogprobs(
    first_token="Q",
    tokens=[
        TokenLogprob(token=":", logprob=-2.0, top_logprobs=[TopLogprob(token=".", logprob=-1.0)]),
        TokenLogprob(token=" ", logprob=-0.25, top_logprobs=[TopLogprob(token=" ", logprob=-0.25)]),
    ],
)


def test_an_echoed_prompt_comes_first_with_no_logprob_for_its_first_token() -> None:
    text = text_logprobs(ENTRIES, start=3, prompt=PROMPT)
    assert text is not None
    assert text.tokens == ["Q", ":", " ", "Par", "ís"]
    assert text.token_logprobs == [None, -2.0, -0.25, -0.5, -1.5]
    assert text.top_logprobs == [None, {".": -1.0}, {" ": -0.25}, {"Par": -0.5}, {"is": -0.9}]
    assert text.text_offset == [0, 1, 2, 3, 6]
    answer = text_completion("r", "m", [finished(ENTRIES, PROMPT)], echoes=["Q: "]).model_dump()["choices"][0]
    assert answer["text"] == "Q: París" and answer["logprobs"]["tokens"] == text.tokens


async def test_a_streamed_echo_waits_for_the_prompts_logprobs() -> None:
    first = delta(0, "Par", 0, ENTRIES[:1], 0).model_copy(update={"prompt_logprobs": PROMPT})
    events = events_of(first, delta(1, "ís", 3, ENTRIES[1:], 1), finished(ENTRIES, PROMPT))
    stream = stream_sse("r", "m", False, merged([events]), kind="text", echoes=["Q: "], echo_logprobs=True)
    chunks = [json.loads(line[6:]) for line in [line async for line in stream] if line.startswith("data: {")]
    texts = [c["choices"][0]["text"] for c in chunks]
    assert texts == ["Q: ", "Par", "ís", ""]
    echoed = chunks[0]["choices"][0]["logprobs"]
    assert echoed["tokens"] == ["Q", ":", " "] and echoed["token_logprobs"] == [None, -2.0, -0.25]
    assert chunks[1]["choices"][0]["logprobs"]["text_offset"] == [3]
    # a choice whose output never streamed (everything came with its final) still gets its prompt first
    stream = stream_sse("r", "m", False, merged([events_of(finished([], PROMPT))]), "text", ["Q: "], echo_logprobs=True)
    chunks = [json.loads(line[6:]) for line in [line async for line in stream] if line.startswith("data: {")]
    assert [c["choices"][0]["text"] for c in chunks] == ["Q: ", ""]
    assert chunks[0]["choices"][0]["logprobs"]["token_logprobs"] == [None, -2.0, -0.25]


def finished(logprobs: list[TokenLogprob] | None, prompt: PromptLogprobs | None = None) -> CompletionFinished:
    usage = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
    return CompletionFinished(
        request_id="r",
        sequence=2,
        model="m",
        text="París",
        finish_reason="stop",
        usage=usage,
        logprobs=logprobs,
        prompt_logprobs=prompt,
    )


def test_unstreamed_answers_carry_logprobs_only_when_asked() -> None:
    answer = chat_completion("r", "m", [finished(ENTRIES)]).model_dump()
    assert [c["token"] for c in answer["choices"][0]["logprobs"]["content"]] == ["Par", "ís"]
    assert chat_completion("r", "m", [finished(None)]).model_dump()["choices"][0]["logprobs"] is None
    echoed = text_completion("r", "m", [finished(ENTRIES)], echoes=["Q: "]).model_dump()
    assert echoed["choices"][0]["logprobs"]["text_offset"] == [3, 6]


async def events_of(*events: ReplyEvent) -> AsyncIterator[ReplyEvent]:
    for e in events:
        yield e


def delta(
    sequence: int, text: str, text_offset: int, entries: list[TokenLogprob], token_offset: int
) -> TokensGenerated:
    return TokensGenerated(
        request_id="r",
        sequence=sequence,
        text=text,
        token_count=len(entries),
        text_offset=text_offset,
        logprobs=entries,
        token_offset=token_offset,
    )


async def test_each_chunk_carries_the_logprobs_of_its_own_tokens() -> None:
    eos = TokenLogprob(token="", logprob=-0.01)
    events = events_of(delta(0, "Par", 0, ENTRIES[:1], 0), delta(1, "ís", 3, ENTRIES[1:], 1), delta(2, "", 5, [eos], 2))
    lines = [line async for line in stream_sse("r", "m", False, merged([events]), kind="text", echoes=["Q: "])]
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    logprobs = [c["choices"][0]["logprobs"] for c in chunks]
    assert logprobs[0] is None  # the echoed prompt
    assert [lp["tokens"] for lp in logprobs[1:]] == [["Par"], ["ís"], [""]]  # the end-of-sequence token too
    assert [lp["text_offset"] for lp in logprobs[1:]] == [[3], [6], [8]]
    events = events_of(delta(0, "Par", 0, ENTRIES, 0))
    chat_lines = [line async for line in stream_sse("r", "m", False, merged([events]))]
    content = json.loads(chat_lines[1][6:])["choices"][0]
    assert content["delta"] == {"content": "Par"} and len(content["logprobs"]["content"]) == 2


async def test_a_redelivery_repeats_neither_text_nor_logprobs() -> None:
    t = [TokenLogprob(token=x, logprob=-math.log(2)) for x in ["He", "llo", ",", " w", "orld"]]
    first_attempt = [delta(0, "Hello", 0, t[:2], 0)]
    # another worker starts over, coalescing differently, up to the end-of-sequence token (no text)
    eos = TokenLogprob(token="", logprob=-0.1)
    second = [delta(0, "He", 0, t[:1], 0), delta(1, "llo, w", 2, t[1:4], 1), delta(2, "orld", 8, t[4:], 4)]
    second.append(delta(3, "", 12, [eos], 5))
    out = [e async for e in without_repeats(events_of(*first_attempt, *second))]
    texts = [e.text for e in out if isinstance(e, TokensGenerated)]
    tokens = [x.token for e in out if isinstance(e, TokensGenerated) for x in e.logprobs or []]
    assert "".join(texts) == "Hello, world" and texts == ["Hello", ", w", "orld", ""]
    assert tokens == ["He", "llo", ",", " w", "orld", ""]


def test_the_api_fields_reach_the_contract() -> None:
    sub = Submission("r", "t", utc_now(), {}, 16)
    chat = {"model": "m", "messages": [{"role": "user", "content": "a"}]}

    def asked(body: dict[str, object]) -> int | None:
        return to_completion_requested(ChatCompletionRequest.model_validate(chat | body), sub).sampling.logprobs

    assert [asked({}), asked({"logprobs": True}), asked({"logprobs": True, "top_logprobs": 3})] == [None, 0, 3]
    assert asked({"logprobs": False, "top_logprobs": 0}) is None
    with pytest.raises(ValidationError, match="top_logprobs"):
        ChatCompletionRequest.model_validate(chat | {"top_logprobs": 3})
    text = CompletionRequest.model_validate({"model": "m", "prompt": "a", "logprobs": 2})
    assert to_completion_requested(text, sub).sampling.logprobs == 2
    assert to_completion_requested(text, sub).sampling.prompt_logprobs is None  # the prompt's only with echo
    echoed = CompletionRequest.model_validate({"model": "m", "prompt": "a", "logprobs": 0, "echo": True})
    assert unsupported_option(echoed) is None
    assert to_completion_requested(echoed, sub).sampling.prompt_logprobs == 0
    plain_echo = CompletionRequest.model_validate({"model": "m", "prompt": "a", "echo": True})
    assert to_completion_requested(plain_echo, sub).sampling.prompt_logprobs is None


def test_requests_for_logprobs_bypass_the_response_cache() -> None:
    request = CompletionRequested(
        request_id="r",
        model="m",
        prompt="a",
        reply_topic="t",
        retain_text=True,
        sampling=SamplingParams(temperature=0, logprobs=1),
    )
    decision = decide(request, "1", RequestCacheOptions(), TenantCachePolicy(), DEFAULT_TTL_S)
    assert decision.bypass == "logprobs" and decision.digest is None
    # a Kafka producer may ask for the prompt's alone
    prompt_only = request.model_copy(update={"sampling": SamplingParams(temperature=0, prompt_logprobs=0)})
    assert decide(prompt_only, "1", RequestCacheOptions(), TenantCachePolicy(), DEFAULT_TTL_S).bypass == "logprobs"


async def test_max_tokens_0_with_echo_scores_the_prompt_alone() -> None:
    sub = Submission("r", "t", utc_now(), {}, 16)
    body = {"model": "m", "prompt": "Q: ", "max_tokens": 0, "echo": True, "logprobs": 1}
    scoring = CompletionRequest.model_validate(body)
    assert scoring.prompt_only() and to_completion_requested(scoring, sub).sampling.max_tokens == 1  # vLLM's way
    with pytest.raises(ValidationError, match="echo"):
        CompletionRequest.model_validate(body | {"echo": False})
    with pytest.raises(ValidationError, match="max_tokens 0 needs echo"):
        CompletionRequest.model_validate({"model": "m", "prompt": "Q: ", "max_tokens": 0})  # echo left out
    answer = text_completion("r", "m", [finished(ENTRIES, PROMPT)], echoes=["Q: "], prompt_only=True).model_dump()
    choice = answer["choices"][0]
    assert choice["text"] == "Q: " and choice["logprobs"]["tokens"] == ["Q", ":", " "]
    assert answer["usage"]["completion_tokens"] == 2  # what the engine generated, as vLLM's server counts it
    unscored = text_completion("r", "m", [finished(None)], echoes=["Q: "], prompt_only=True).model_dump()["choices"][0]
    assert unscored["text"] == "Q: " and unscored["logprobs"] is None
    first = delta(0, "Par", 0, ENTRIES[:1], 0).model_copy(update={"prompt_logprobs": PROMPT})
    events = events_of(first, finished(ENTRIES, PROMPT))
    stream = stream_sse("r", "m", False, merged([events]), "text", ["Q: "], echo_logprobs=True, prompt_only=True)
    chunks = [json.loads(line[6:]) for line in [line async for line in stream] if line.startswith("data: {")]
    assert [c["choices"][0]["text"] for c in chunks] == ["Q: ", ""]


def test_tokens_as_ids_name_each_token_by_id_while_bytes_and_offsets_follow_the_text() -> None:
    """vLLM's return_tokens_as_token_ids: "token_id:<id>", which tells apart tokens that decode alike (two entries
    of one position's alternatives here) and tokens whose text is not valid UTF-8 alone."""
    entries = [
        TokenLogprob(
            token="\ufffd",
            logprob=-0.5,
            token_id=101,
            top_logprobs=[
                TopLogprob(token="\ufffd", logprob=-0.5, token_id=101),
                TopLogprob(token="\ufffd", logprob=-0.7, token_id=102),
            ],
        ),
        TokenLogprob(token="ís", logprob=-1.5, token_id=7),
    ]
    chat = chat_logprobs(entries, as_ids=True)
    assert chat is not None and chat.content is not None
    assert [(c.token, c.bytes) for c in chat.content] == [
        ("token_id:101", [239, 191, 189]),
        ("token_id:7", [195, 173, 115]),
    ]
    assert [t.token for t in chat.content[0].top_logprobs] == ["token_id:101", "token_id:102"]
    text = text_logprobs(
        entries, start=2, prompt=PromptLogprobs(first_token="Q:", first_token_id=5, tokens=[]), as_ids=True
    )
    assert text is not None
    assert text.tokens == ["token_id:5", "token_id:101", "token_id:7"]
    assert text.text_offset == [0, 2, 3]  # the text's characters, not the labels'
    assert text.top_logprobs[1] == {"token_id:101": -0.5, "token_id:102": -0.7}  # both kept: their labels differ
    legacy = TokenLogprob(token="Par", logprob=-0.5)  # from a worker that predates ids: its text stays
    assert text_logprobs([legacy], 0, as_ids=True).tokens == ["Par"]  # type: ignore[union-attr]
