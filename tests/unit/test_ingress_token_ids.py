"""vLLM's return_token_ids at the ingress: where the prompt's and the generated tokens' ids go in OpenAI's responses
and chunks, each id once and in order, whatever the stream went through (a worker's redelivery, lost deltas, a
reasoning model's thinking left out). Events from a plain list."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from pydantic import ValidationError

from services.ingress.protocol import ChatCompletionRequest, CompletionRequest
from services.ingress.serving import (
    Submission,
    chat_completion,
    merged,
    stream_sse,
    text_completion,
    to_completion_requested,
    without_reasoning,
    without_repeats,
)
from shared.contracts import CompletionFinished, ReplyEvent, TokensGenerated, Usage, utc_now

PROMPT_IDS = [1, 7, 8, 9]
WORDS = [("The", [40]), (" capital", [41, 42]), (" is", [43]), (" Paris.", [44, 45])]
EOS = 2
ALL_IDS = [i for _, ids in WORDS for i in ids] + [EOS]
FINAL = CompletionFinished(
    request_id="r",
    sequence=len(WORDS) + 1,
    model="m",
    text="".join(w for w, _ in WORDS),
    finish_reason="stop",
    usage=Usage(prompt_tokens=len(PROMPT_IDS), completion_tokens=len(ALL_IDS), total_tokens=10),
    token_ids=ALL_IDS,
    prompt_token_ids=PROMPT_IDS,
)


def delta(i: int, sequence: int | None = None) -> TokensGenerated:
    """The i-th word's delta (i == len(WORDS): the end-of-sequence token, without text), as a worker sends it."""
    text, ids = WORDS[i] if i < len(WORDS) else ("", [EOS])
    return TokensGenerated(
        request_id="r",
        sequence=i if sequence is None else sequence,
        text=text,
        token_count=len(ids),
        text_offset=sum(len(w) for w, _ in WORDS[:i]),
        token_offset=sum(len(t) for _, t in WORDS[:i]),
        token_ids=ids,
        prompt_token_ids=PROMPT_IDS if i == 0 else None,
    )


async def events_of(*events: ReplyEvent) -> AsyncIterator[ReplyEvent]:
    for e in events:
        yield e


async def chunks_of(events: list[ReplyEvent], kind: str = "chat", token_ids: bool = True) -> list[dict]:
    stream = merged([without_repeats(events_of(*events))])
    lines = [line async for line in stream_sse("r", "m", True, stream, kind, token_ids=token_ids)]  # type: ignore[arg-type]
    assert lines[-1] == "data: [DONE]\n\n"
    return [json.loads(line[6:-2]) for line in lines[:-1]]


def streamed_ids(chunks: list[dict]) -> list[int]:
    return [i for c in chunks for choice in c["choices"] for i in choice.get("token_ids", [])]


def content_of(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def test_a_chat_stream_carries_the_prompts_ids_first_then_each_chunks_own() -> None:
    chunks = await chunks_of([delta(0), delta(1), delta(2), delta(3), delta(4), FINAL])
    opening = chunks[0]
    assert opening["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert opening["prompt_token_ids"] == PROMPT_IDS
    assert all("prompt_token_ids" not in c for c in chunks[1:])
    assert streamed_ids(chunks) == ALL_IDS  # the end-of-sequence token too, in a chunk of its own
    assert content_of(chunks) == "The capital is Paris."
    eos = [c for c in chunks if c["choices"] and c["choices"][0].get("token_ids") == [EOS]]
    assert len(eos) == 1 and eos[0]["choices"][0]["delta"] == {}


async def test_without_return_token_ids_no_chunk_has_ids() -> None:
    plain = [e.model_copy(update={"token_ids": None, "prompt_token_ids": None}) for e in [delta(0), delta(1), FINAL]]
    chunks = await chunks_of(plain, token_ids=False)  # type: ignore[arg-type]
    assert all("prompt_token_ids" not in c and "token_ids" not in c["choices"][0] for c in chunks if c["choices"])
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


async def test_a_redelivered_stream_repeats_no_id_and_a_lost_delta_leaves_no_hole() -> None:
    # a worker died after two deltas; the one that took over generates from the start
    redelivered = [delta(0), delta(1), delta(0, 2), delta(1, 3), delta(2, 4), delta(3, 5), delta(4, 6), FINAL]
    chunks = await chunks_of(redelivered)  # type: ignore[arg-type]
    assert streamed_ids(chunks) == ALL_IDS and content_of(chunks) == "The capital is Paris."
    # the second delta expired in a producer while the broker was away: the final brings the rest
    chunks = await chunks_of([delta(0), delta(2), delta(3), FINAL])
    assert streamed_ids(chunks) == ALL_IDS and content_of(chunks) == "The capital is Paris."


async def test_a_text_stream_puts_the_prompts_ids_in_each_choices_first_chunk() -> None:
    chunks = await chunks_of([delta(0), delta(1), delta(2), delta(3), delta(4), FINAL], kind="text")
    first = chunks[0]["choices"][0]
    assert first["text"] == "The" and first["prompt_token_ids"] == PROMPT_IDS and first["token_ids"] == [40]
    assert all("prompt_token_ids" not in c["choices"][0] for c in chunks[1:] if c["choices"])
    assert streamed_ids(chunks) == ALL_IDS


async def test_whole_answers_carry_the_ids_where_vllm_puts_them() -> None:
    chat = chat_completion("r", "m", [FINAL, FINAL]).model_dump()
    assert chat["prompt_token_ids"] == PROMPT_IDS
    assert [c["token_ids"] for c in chat["choices"]] == [ALL_IDS, ALL_IDS]
    text = text_completion("r", "m", [FINAL]).model_dump()
    assert text["choices"][0]["prompt_token_ids"] == PROMPT_IDS and text["choices"][0]["token_ids"] == ALL_IDS
    assert "prompt_token_ids" not in text  # a completion's are in its choices
    plain = FINAL.model_copy(update={"token_ids": None, "prompt_token_ids": None})
    chat = chat_completion("r", "m", [plain]).model_dump()
    assert "prompt_token_ids" not in chat and "token_ids" not in chat["choices"][0]
    assert "token_ids" not in text_completion("r", "m", [plain]).model_dump()["choices"][0]


async def test_thinking_left_out_takes_the_generated_ids_along_but_not_the_prompts() -> None:
    thought = delta(0).model_copy(update={"text": "", "reasoning": "Hmm.", "reasoning_offset": 0})
    answer = delta(1).model_copy(update={"text_offset": 0, "reasoning_offset": 4})
    final = FINAL.model_copy(update={"reasoning": "Hmm."})
    kept = [e async for e in without_reasoning(events_of(thought, answer, final))]
    assert all(getattr(e, "token_ids", None) is None for e in kept)
    assert isinstance(kept[0], TokensGenerated) and kept[0].prompt_token_ids == PROMPT_IDS  # it stays, for them
    chunks = await chunks_of(kept)
    assert chunks[0]["prompt_token_ids"] == PROMPT_IDS and streamed_ids(chunks) == []
    assert "Hmm" not in json.dumps(chunks)


def test_the_option_reaches_the_request() -> None:
    submission = Submission("r", "replies", utc_now(), {}, 16)
    for body in (
        ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "Hi"}], return_token_ids=True),
        CompletionRequest(model="m", prompt="Hi", return_token_ids=True),
    ):
        assert to_completion_requested(body, submission).return_token_ids
    asked_nothing = to_completion_requested(CompletionRequest(model="m", prompt="Hi"), submission)
    assert not asked_nothing.return_token_ids


async def test_each_choice_of_a_chat_stream_opens_with_the_prompts_ids() -> None:
    streams = [without_repeats(events_of(delta(0), delta(1), FINAL)) for _ in range(2)]
    lines = [line async for line in stream_sse("r", "m", False, merged(streams), "chat", choices=2, token_ids=True)]
    chunks = [json.loads(line[6:-2]) for line in lines[:-1]]
    openings = [c for c in chunks if c["choices"][0]["delta"].get("role") == "assistant"]
    assert sorted(c["choices"][0]["index"] for c in openings) == [0, 1]
    assert all(c["prompt_token_ids"] == PROMPT_IDS for c in openings)
    for index in (0, 1):
        mine = [c for c in chunks if c["choices"][0]["index"] == index]
        assert mine[0] in openings  # before any of the choice's text
        assert [i for c in mine for i in c["choices"][0].get("token_ids", [])] == [40, 41, 42]


def test_an_echo_of_a_prompt_the_worker_may_cut_or_decode_waits_for_the_workers_text() -> None:
    assert CompletionRequest(model="m", prompt=["Once", "Twice"], echo=True).echo_texts() == ["Once", "Twice"]
    assert CompletionRequest(model="m", prompt=[[5, 6]], echo=True).echo_texts() == [None]
    cut = CompletionRequest(model="m", prompt=["Once", "Twice"], echo=True, truncate_prompt_tokens=3)
    assert cut.echo_texts() == [None, None]


def test_truncate_prompt_tokens_0_is_refused_at_the_edge_not_by_the_contract() -> None:
    """0 would keep no prompt: the API refuses it (a 400), so it never reaches the contract, which refuses it too."""
    with pytest.raises(ValidationError, match="at least 1"):
        CompletionRequest(model="m", prompt="Hi", truncate_prompt_tokens=0)
    assert CompletionRequest(model="m", prompt="Hi", truncate_prompt_tokens=-1).truncate_prompt_tokens == -1
