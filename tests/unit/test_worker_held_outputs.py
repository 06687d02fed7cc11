"""An output held for review (services/worker/generation.py with the output screening of services/safety/output.py):
the delta held back is what the stream would have carried, whatever reads the output, so a client whose response a
reviewer releases gets the same text, reasoning, tokens and logprobs as a stream never held. The engine is the
worker's own, on a tokenizer made here (one token per character), with vLLM's generation replaced by a written
output, a token a step."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest

from services.safety.review import deliveries
from services.worker.engine import Engine, GenerationStep
from services.worker.generation import serve_request
from services.worker.reasoning import THINK, ThinkMarkers
from services.worker.vllm_parsing import VllmParsers
from shared.contracts import (
    CompletionFinished,
    CompletionRequested,
    ContentFlagged,
    GenerationFailed,
    Message,
    PromptLogprobs,
    SamplingParams,
    TokenLogprob,
    TokensGenerated,
)
from tests.unit.char_tokenizer import char_tokenizer
from tests.unit.test_safety_output import HOLD_PII, guard_for
from tests.unit.test_worker_tool_calls import request as chat_request

PROMPT = "<|im_start|>assistant\n<think>\n"  # Qwen3's, with thinking on: the template opens the block
TOKENIZER = char_tokenizer(["<think>", "</think>", "<tool_call>", "</tool_call>"])


class ScriptedEngine(Engine):
    """The worker's engine, its model replaced by ``output``, written ``per_step`` tokens a step."""

    tool_call_format = "hermes"
    speaks_harmony = False
    thinks_in_special_tokens = False
    variant = "fp32"

    def __init__(
        self, output: str, parsers: VllmParsers | None = None, markers: ThinkMarkers | None = None, per_step: int = 1
    ) -> None:
        self._tokenizer = TOKENIZER
        self.output, self.per_step = output, per_step
        self.vllm_parsers = parsers
        self.markers = markers

    @property
    def think_markers(self) -> ThinkMarkers | None:  # type: ignore[override]
        return self.markers

    def render_prompt(self, *_: object) -> str:
        return PROMPT

    async def generate(  # type: ignore[override]
        self, request_id: str, prompt: str, sampling: SamplingParams, *_: object
    ) -> AsyncIterator[GenerationStep]:
        ids = TOKENIZER.encode(self.output, add_special_tokens=False)
        prompt_logprobs = PromptLogprobs(first_token="<", tokens=[]) if sampling.prompt_logprobs is not None else None
        for at in range(0, len(ids), self.per_step):
            step = ids[at : at + self.per_step]
            logprobs = tuple(TokenLogprob(token=TOKENIZER.decode([t]), logprob=-at - i) for i, t in enumerate(step))
            yield GenerationStep(
                text=TOKENIZER.decode(step),
                new_tokens=len(step),
                prompt_tokens=len(prompt),
                finish_reason="stop" if at + len(step) == len(ids) else None,
                logprobs=logprobs if sampling.logprobs is not None else (),
                prompt_logprobs=prompt_logprobs if at == 0 else None,
                token_ids=tuple(step),
            )

    async def abort(self, request_id: str) -> None:
        pass


async def served(engine: ScriptedEngine, request: CompletionRequested, every: int = 4) -> tuple[list[Message], bool]:
    """What the requester gets, the output screened under a policy that holds personal data: the events the worker
    sends, then, for an output held, those a reviewer's approval delivers; and whether it was held."""
    flagged: list[ContentFlagged] = []
    sent: list[Message] = []

    async def publish(_: CompletionRequested, message: Message) -> None:
        sent.append(message)

    assert await serve_request(engine, request, publish, 0, guard=await guard_for(HOLD_PII, flagged, every=every))
    for item in flagged:
        assert item.action == "hold" and item.held_completion is not None
        approved = deliveries("output", ((), item.held_completion, item.held_delta), "r", "approve", [], ["pii"])
        sent += [delivery.message for delivery in approved]
    return sent, bool(flagged)


def joined(events: list[Message]) -> tuple[str, str, int, list[TokenLogprob]]:
    """A streaming client's reasoning, text, token count and logprobs, each event placed at its offsets."""
    deltas = [e for e in events if isinstance(e, TokensGenerated)]
    assert [d.sequence for d in deltas] == list(range(len(deltas)))
    reasoning = text = ""
    tokens, logprobs = 0, []
    for delta in deltas:
        assert (delta.text_offset, delta.reasoning_offset or 0) == (len(text), len(reasoning))
        assert delta.token_offset in (None, tokens)
        text, reasoning, tokens = text + delta.text, reasoning + delta.reasoning, tokens + delta.token_count
        logprobs += delta.logprobs or []
    (final,) = [e for e in events if isinstance(e, CompletionFinished)]
    assert final.sequence == len(deltas)
    return reasoning, text, tokens, logprobs


async def test_a_held_output_read_by_vllm_s_parsers_is_released_as_their_stream_reads_it() -> None:
    """Before a call, vLLM's qwen3 parsers stream the newlines after the think block as text, and leave them out of
    the whole reading: the held part must come from the stream's reading, or the client's text loses characters."""
    call = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"
    output = "Hmm, weather.</think>\n\nLet me mail bob@example.com about it." + call
    parsers = VllmParsers.for_model("qwen3_xml", "qwen3", TOKENIZER)
    events, held = await served(ScriptedEngine(output, parsers), chat_request(stream=True))
    reasoning, text, tokens, _ = joined(events)
    assert held and (reasoning, text) == ("Hmm, weather.", "\n\nLet me mail bob@example.com about it.")
    assert tokens == len(TOKENIZER.encode(output, add_special_tokens=False))
    final = events[-1]
    assert isinstance(final, CompletionFinished) and final.tool_calls
    assert final.tool_calls[0].function.arguments == '{"city": "Paris"}'

    unheld = output.replace("bob@example.com", "Bob")
    events, held = await served(ScriptedEngine(unheld, parsers), chat_request(stream=True))
    assert not held and joined(events)[1] == "\n\nLet me mail Bob about it."  # a stream never held reads alike


async def test_a_held_reasoning_output_by_ferry_s_reader_keeps_back_the_rest_of_both() -> None:
    output = "I will mail bob@example.com now.</think>Done, mailed."
    events, held = await served(ScriptedEngine(output, markers=THINK), chat_request(tools=[], stream=True))
    reasoning, text, _, _ = joined(events)
    assert held and (reasoning, text) == ("I will mail bob@example.com now.", "Done, mailed.")


async def test_a_held_output_keeps_each_token_s_logprob_once_and_in_order() -> None:
    output = "Sure, write to bob@example.com today."
    asked = chat_request(tools=[], stream=True, sampling=SamplingParams(logprobs=0, prompt_logprobs=0))
    events, held = await served(ScriptedEngine(output), asked)
    _, text, tokens, logprobs = joined(events)
    assert held and text == output and tokens == len(output)
    assert [e.logprob for e in logprobs] == [-at for at in range(len(output))]


async def test_an_output_held_from_its_first_token_still_brings_the_prompts_logprobs_first() -> None:
    asked = chat_request(tools=[], stream=True, sampling=SamplingParams(prompt_logprobs=0))
    events, held = await served(ScriptedEngine("bob@example.com today", per_step=15), asked)
    first = events[0]
    assert held and isinstance(first, TokensGenerated) and first.text == "bob@example.com today"
    assert first.prompt_logprobs is not None


async def test_a_held_tool_call_is_released_as_the_call_not_as_its_text() -> None:
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "bob@example.com"}}</tool_call>'
    output = "Checking. " + call
    events, held = await served(ScriptedEngine(output), chat_request(stream=True))
    _, text, tokens, _ = joined(events)
    final = events[-1]
    assert held and isinstance(final, CompletionFinished) and final.finish_reason == "tool_calls"
    assert text == "Checking. " and tokens == len(TOKENIZER.encode(output, add_special_tokens=False))
    assert final.tool_calls and final.tool_calls[0].function.arguments == '{"city": "bob@example.com"}'


def joined_token_ids(events: list[Message]) -> list[int]:
    """A streaming client's token ids, each event's placed at its token_offset (which must follow on)."""
    ids: list[int] = []
    for delta in (e for e in events if isinstance(e, TokensGenerated)):
        assert delta.token_ids is not None and delta.token_offset == len(ids)
        assert len(delta.token_ids) == delta.token_count
        ids += delta.token_ids
    return ids


async def test_token_ids_come_once_each_in_order_whatever_reads_the_output_and_when_it_is_held() -> None:
    """return_token_ids: every generated token's id, the tokens of tags and calls the readers hold back included, in
    the stream (an output held for review: in the delta its release brings) and whole in the final event."""
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    cases = [
        (ScriptedEngine("Checking. " + call), chat_request(stream=True, return_token_ids=True)),
        (
            ScriptedEngine("I will mail bob@example.com now.</think>Done, mailed.", markers=THINK),
            chat_request(tools=[], stream=True, return_token_ids=True),
        ),
        (
            ScriptedEngine("Checking bob@example.com. " + call, per_step=3),
            chat_request(stream=True, return_token_ids=True),
        ),
    ]
    for engine, asked in cases:
        events, held = await served(engine, asked)
        expected = TOKENIZER.encode(engine.output, add_special_tokens=False)
        assert joined_token_ids(events) == expected
        first, final = events[0], events[-1]
        assert isinstance(first, TokensGenerated) and isinstance(final, CompletionFinished)
        assert final.token_ids == expected and final.usage.completion_tokens == len(expected)
        prompt_ids = TOKENIZER.encode(PROMPT, add_special_tokens=False)  # the prompt as the engine reads it
        assert first.prompt_token_ids == final.prompt_token_ids == prompt_ids
        assert all(e.prompt_token_ids is None for e in events[1:-1] if isinstance(e, TokensGenerated))
    assert held  # the last case's output was held, then released


async def test_replies_carry_no_token_ids_unless_asked() -> None:
    events, _ = await served(ScriptedEngine("Done, mailed."), chat_request(tools=[], stream=True))
    deltas = [e for e in events if isinstance(e, TokensGenerated)]
    assert deltas and all(d.token_ids is None and d.prompt_token_ids is None for d in deltas)
    final = events[-1]
    assert isinstance(final, CompletionFinished) and final.token_ids is None and final.prompt_token_ids is None


async def test_the_first_delta_alone_carries_the_prompts_token_count() -> None:
    """A stream's usage so far (vLLM's continuous_usage_stats) needs it before the final event brings the usage; an
    output held for review from its first token brings it in the delta its release sends."""
    for output in ("Done, mailed.", "bob@example.com is mailed."):
        events, held = await served(ScriptedEngine(output), chat_request(tools=[], stream=True))
        deltas = [e for e in events if isinstance(e, TokensGenerated)]
        final = events[-1]
        assert isinstance(final, CompletionFinished) and deltas
        assert deltas[0].prompt_token_count == final.usage.prompt_tokens > 0
        assert all(d.prompt_token_count is None for d in deltas[1:])
    assert held


async def test_truncate_prompt_tokens_keeps_the_prompts_end_or_start_and_an_echo_shows_the_prompt_as_cut() -> None:
    engine = ScriptedEngine("Done.")
    engine.config = SimpleNamespace(max_model_len=64, model_id="m")  # type: ignore[assignment]
    whole = TOKENIZER.encode(PROMPT, add_special_tokens=False)
    for side, kept in (("left", whole[-5:]), ("right", whole[:5])):
        asked = chat_request(
            tools=[], stream=True, return_token_ids=True, truncate_prompt_tokens=5, truncation_side=side
        )
        events, _ = await served(engine, asked)
        final = events[-1]
        assert isinstance(final, CompletionFinished) and final.prompt_token_ids == kept
        assert final.prompt_text is None  # a chat is not echoed so
    raw = CompletionRequested(
        request_id="r", model="m", reply_topic="replies", prompt="0123456789", truncate_prompt_tokens=4
    )
    events, _ = await served(engine, raw)
    assert isinstance(events[-1], CompletionFinished) and events[-1].prompt_text == "6789"
    uncut = raw.model_copy(update={"truncate_prompt_tokens": -1})  # as many as the context holds: all of it here
    events, _ = await served(engine, uncut)
    assert isinstance(events[-1], CompletionFinished) and events[-1].prompt_text == "0123456789"
    too_many = raw.model_copy(update={"truncate_prompt_tokens": 65})
    events, _ = await served(engine, too_many)
    failed = events[-1]
    assert isinstance(failed, GenerationFailed) and failed.param == "truncate_prompt_tokens"
    with pytest.raises(ValueError, match="truncate_prompt_tokens"):
        raw.model_validate(raw.model_dump() | {"truncate_prompt_tokens": 0})


def test_special_tokens_side_by_side_reach_vllm_only_when_the_client_keeps_them() -> None:
    def spaces(**options: object) -> bool:
        params = Engine._sampling_params(SamplingParams(**options), 8, skip_special_tokens=False)  # type: ignore[arg-type]
        return params.spaces_between_special_tokens

    assert not spaces(skip_special_tokens=False, spaces_between_special_tokens=False)
    assert spaces(skip_special_tokens=False)
    assert spaces(spaces_between_special_tokens=False)  # kept for ferry's readers only: vLLM's default stands
