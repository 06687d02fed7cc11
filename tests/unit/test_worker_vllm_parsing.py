"""A model whose registry entry names vLLM's parsers has its output read by them (services/worker/vllm_parsing.py):
vLLM's real parsers, on a tokenizer made here (one token per character, the models' markers as special tokens)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import pytest
from pydantic import ValidationError
from transformers import PreTrainedTokenizerFast

from services.ingress.serving import StreamedCalls
from services.worker.engine import Engine
from services.worker.model_store import check_parsers
from services.worker.tool_calls import call_id
from services.worker.vllm_parsing import UnknownParser, VllmParsers, VllmReading, chat_request
from shared.contracts import ChatMessage, CompletionRequested, ToolCall, ToolCallPiece
from shared.registry import ModelRecord, read_seed
from tests.unit.char_tokenizer import char_tokenizer
from tests.unit.test_worker_tool_calls import request

THINK_MARKERS = ["<think>", "</think>"]  # tokens of their own, not special ones, as in Qwen3's and DeepSeek R1's
QWEN3_CALL_MARKERS = ["<tool_call>", "</tool_call>"]
CALL_MARKERS = ["<｜tool_calls_begin｜>", "<｜tool_calls_end｜>", "<｜tool_call_begin｜>", "<｜tool_call_end｜>"]
CALL_MARKERS += ["<｜tool_sep｜>"]  # Step-3's, special tokens
SPLITS = (1, 2, 3, 7)
"""Tokens per engine step: one for a fast engine, a few when vLLM's output reader lags. (With a whole answer in one
step, some of vLLM's parsers stream a call's arguments under the wrong call, in vLLM's server too.)"""
STEPS_PER_DELTA = 4
R1_PROMPT = "<｜User｜>Weather in Paris?<｜Assistant｜><think>\n"


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """One token per character, and a token for each of the markers."""
    return char_tokenizer(THINK_MARKERS + QWEN3_CALL_MARKERS, CALL_MARKERS)


class Streamed:
    """What a reading gave as the output streamed: its thinking, its text and its calls' pieces, joined."""

    def __init__(self) -> None:
        self.reasoning, self.text, self.pieces = "", "", []

    def add(self, given: tuple[str, str, list[ToolCallPiece]]) -> None:
        self.reasoning += given[0]
        self.text += given[1]
        self.pieces += given[2]

    def calls(self) -> list[tuple[str, str, str]]:
        """(id, name, arguments) of each call, its pieces joined in order."""
        joined: dict[int, tuple[str, str, str]] = {}
        for piece in self.pieces:
            call_id_, name, arguments = joined.get(piece.index, (piece.id, piece.name, ""))
            assert (piece.id, piece.name) == (call_id_, name) and piece.arguments_offset == len(arguments)
            joined[piece.index] = (call_id_, name, arguments + piece.arguments)
        return [joined[i] for i in sorted(joined)]


def read(
    parsers: VllmParsers, req: CompletionRequested, output: str, split: int, prompt: str = ""
) -> tuple[Streamed, VllmReading, str, list[int]]:
    """Streams the tokens of ``output`` as an engine would, each step ``split`` tokens, their text without the
    special tokens unless the reading keeps them, and as the worker sends it, a delta every STEPS_PER_DELTA steps;
    returns what the reading gave, the reading, and the output's text and tokens as the engine gave them."""
    tokenizer = parsers.tokenizer
    ids = tokenizer.encode(output, add_special_tokens=False)
    step_texts: list[str] = []
    step_tokens: list[Sequence[int]] = []
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    reading = parsers.reading(req, prompt_ids, step_texts, step_tokens)
    streamed, delta = Streamed(), ""
    for at in range(0, len(ids), split):
        step = ids[at : at + split]
        step_texts.append(tokenizer.decode(step, skip_special_tokens=not reading.keeps_special_tokens))
        step_tokens.append(step)
        delta += step_texts[-1]
        if len(step_texts) % STEPS_PER_DELTA == 0:
            streamed.add(reading.feed(delta))
            delta = ""
    streamed.add(reading.feed(delta))
    streamed.add(reading.finish())
    return streamed, reading, "".join(step_texts), ids


def client_calls(streamed: Streamed, calls: list[ToolCall] | None) -> list[tuple[str, str, str]]:
    """The calls a streaming client gets: the pieces, then what the final event adds to them (the ingress's
    StreamedCalls), joined."""
    sent = StreamedCalls()
    deltas = sent.pieces(0, streamed.pieces) + sent.rest(0, calls or [])
    joined: dict[int, tuple[str, str, str]] = {}
    for delta in deltas:
        assert delta.function is not None
        if delta.index not in joined:
            assert delta.id is not None and delta.function.name is not None
            joined[delta.index] = (delta.id, delta.function.name, "")
        call_id_, name, arguments = joined[delta.index]
        joined[delta.index] = (call_id_, name, arguments + (delta.function.arguments or ""))
    return [joined[i] for i in sorted(joined)]


def counter(reading: VllmReading) -> Callable[[tuple[int, int]], int]:
    """The tokens of a span of the reading's output, as the worker counts them (Engine.tokens_within)."""
    engine = Engine.__new__(Engine)
    engine._tokenizer = reading.parsers.tokenizer
    steps = list(zip(reading.step_texts, reading.step_tokens, strict=True))
    return partial(engine.tokens_within, steps, keep_special_tokens=reading.keeps_special_tokens)


def whole_calls(calls: list[ToolCall] | None) -> list[tuple[str, str, str]]:
    return [(c.id, c.function.name, c.function.arguments) for c in calls or []]


@pytest.mark.parametrize("split", SPLITS)
def test_xlam_calls_are_read_streamed_and_whole_with_ferry_s_ids(
    tokenizer: PreTrainedTokenizerFast, split: int
) -> None:
    parsers = VllmParsers.for_model("xlam", None, tokenizer)
    calls = [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]
    output = json.dumps(calls)
    streamed, reading, output, ids = read(parsers, request(), output, split)
    reasoning, text, whole, finish = reading.whole(output, ids, "stop")
    expected = [
        (call_id("req-1", 0), "get_weather", '{"city": "Paris"}'),
        (call_id("req-1", 1), "get_time", "{}"),
    ]
    assert (reasoning, text, whole_calls(whole), finish) == (None, "", expected, "tool_calls")
    assert client_calls(streamed, whole) == expected
    if split < 10_000:  # xLAM's parser streams the arguments when the steps are small, as they are
        assert streamed.calls() == expected
    assert streamed.text == "" and streamed.reasoning == ""


@pytest.mark.parametrize("split", SPLITS)
def test_step3_calls_in_their_markers(tokenizer: PreTrainedTokenizerFast, split: int) -> None:
    parsers = VllmParsers.for_model("step3", None, tokenizer)
    output = (
        "Let me look.<｜tool_calls_begin｜><｜tool_call_begin｜>function<｜tool_sep｜>"
        '<steptml:invoke name="get_weather"><steptml:parameter name="city">Paris</steptml:parameter>'
        "</steptml:invoke><｜tool_call_end｜><｜tool_calls_end｜>"
    )
    streamed, reading, output, ids = read(parsers, request(), output, split)
    _, text, whole, finish = reading.whole(output, ids, "stop")
    expected = [(call_id("req-1", 0), "get_weather", '{"city": "Paris"}')]
    assert (text, whole_calls(whole), finish) == ("Let me look.", expected, "tool_calls")
    assert client_calls(streamed, whole) == expected
    assert streamed.text == "Let me look."
    assert reading.keeps_special_tokens  # its markers are special tokens, which the engine must keep


@pytest.mark.parametrize("split", SPLITS)
def test_an_answer_without_calls_streams_as_text(tokenizer: PreTrainedTokenizerFast, split: int) -> None:
    parsers = VllmParsers.for_model("xlam", None, tokenizer)
    output = "It is sunny in Paris, [as far as I know]."
    streamed, reading, output, ids = read(parsers, request(), output, split)
    assert reading.whole(output, ids, "length") == (None, output, None, "length")
    assert (streamed.text, streamed.calls()) == (output, [])


@pytest.mark.parametrize("split", SPLITS)
def test_a_reasoning_parser_takes_the_thinking_apart(tokenizer: PreTrainedTokenizerFast, split: int) -> None:
    parsers = VllmParsers.for_model(None, "deepseek_r1", tokenizer)
    req = request(tools=[])  # no tools: text mode, still read for thinking
    assert parsers.reads(req)
    # DeepSeek R1's template opens the block at the end of the prompt
    streamed, reading, output, ids = read(parsers, req, "Paris is in France.</think>It is sunny.", split, R1_PROMPT)
    reasoning, text, calls, finish = reading.whole(output, ids, "stop")
    assert (reasoning, text, calls, finish) == ("Paris is in France.", "It is sunny.", None, "stop")
    assert (streamed.reasoning, streamed.text) == (reasoning, text)
    assert reading.reasoning_tokens(output, reasoning, counter(reading)) == len("Paris is in France.")  # a token a
    # character here: the thinking's tokens, although the model did not write the block's start


def test_a_prompt_that_closed_the_think_block_leaves_the_output_all_answer(tokenizer: PreTrainedTokenizerFast) -> None:
    parsers = VllmParsers.for_model(None, "deepseek_r1", tokenizer)
    streamed, *_ = read(parsers, request(tools=[]), "It is sunny.", 3, prompt="Hi<think>\n\n</think>")
    assert (streamed.reasoning, streamed.text) == ("", "It is sunny.")


def test_thinking_then_a_call(tokenizer: PreTrainedTokenizerFast) -> None:
    """A token a step, as the engine gives them when it keeps up: in larger steps, vLLM's xLAM parser after a
    reasoning parser streams some arguments twice (in vLLM's server too)."""
    split = 1
    parsers = VllmParsers.for_model("xlam", "deepseek_r1", tokenizer)
    output = 'The tool knows.</think>[{"name": "get_weather", "arguments": {"city": "Oslo"}}]'
    streamed, reading, output, ids = read(parsers, request(), output, split, R1_PROMPT)
    reasoning, text, whole, finish = reading.whole(output, ids, "stop")
    expected = [(call_id("req-1", 0), "get_weather", '{"city": "Oslo"}')]
    assert (reasoning, text, whole_calls(whole), finish) == ("The tool knows.", "", expected, "tool_calls")
    assert (streamed.reasoning, client_calls(streamed, whole)) == ("The tool knows.", expected)


@pytest.mark.parametrize("split", SPLITS)
def test_a_forced_call_after_the_thinking_is_left_to_ferry_s_reader(
    tokenizer: PreTrainedTokenizerFast, split: int
) -> None:
    """Forced calls are written as ferry's grammar makes them, which ferry's reader reads: the parsers give the
    thinking apart and the rest as text, even where a parser of calls is named."""
    parsers = VllmParsers.for_model("xlam", "deepseek_r1", tokenizer)
    forced = request(tool_choice="required")
    assert parsers.reads(forced) and not parsers.reads_calls(forced)
    calls = '[{"name": "get_time", "arguments": {}}]'
    streamed, reading, output, ids = read(parsers, forced, f"No clock here.</think>{calls}", split, R1_PROMPT)
    assert (streamed.reasoning, streamed.text, streamed.pieces) == ("No clock here.", calls, [])
    assert reading.whole(output, ids, "stop") == ("No clock here.", calls, None, "stop")


def test_vllm_s_engine_based_parsers_too(tokenizer: PreTrainedTokenizerFast) -> None:
    """vLLM 0.32's qwen3 and qwen3_xml parsers read through its parser engine, which is fed each step alone rather
    than the text so far: Qwen3-Coder's thinking and calls, a token a step."""
    parsers = VllmParsers.for_model("qwen3_xml", "qwen3", tokenizer)
    output = (
        "Hmm, weather.</think>\n\nLet me check.<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n"
        "</parameter>\n</function>\n</tool_call>"
    )
    streamed, reading, output, ids = read(parsers, request(), output, 1, "<|im_start|>assistant\n<think>\n")
    reasoning, text, whole, finish = reading.whole(output, ids, "stop")
    expected = [(call_id("req-1", 0), "get_weather", '{"city": "Paris"}')]
    assert (reasoning, text, whole_calls(whole), finish) == ("Hmm, weather.", "Let me check.", expected, "tool_calls")
    # streamed, vLLM's qwen3 parser gives the newlines after the block as text too; whole, it leaves them out
    assert (streamed.reasoning, streamed.text, streamed.calls()) == ("Hmm, weather.", "\n\nLet me check.", expected)


def test_names_vllm_does_not_have_or_that_do_not_fit_the_tokenizer_are_refused(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    with pytest.raises(UnknownParser, match="no_such_parser"):
        VllmParsers.for_model("no_such_parser", None, tokenizer)
    # Hunyuan's hy_v3 needs its call markers among the tokenizer's tokens: this one has none
    with pytest.raises(UnknownParser, match="hy_v3"):
        VllmParsers.for_model("hy_v3", None, tokenizer)


def test_only_chats_that_may_call_or_think_are_read(tokenizer: PreTrainedTokenizerFast) -> None:
    thinking_only = VllmParsers.for_model(None, "deepseek_r1", tokenizer)
    assert thinking_only.reads(request()) and not thinking_only.reads_calls(request())  # calls: ferry's reader's
    calls_only = VllmParsers.for_model("xlam", None, tokenizer)
    assert calls_only.reads(request())
    assert not calls_only.reads(request(tools=[]))  # text: nothing for a call parser to read
    assert not calls_only.reads(request(tool_choice="required"))  # forced: ferry reads its grammar's JSON
    assert not calls_only.reads(request(tool_choice="required", tool_choice_function="get_time"))
    assert not calls_only.reads(request(messages=[], prompt="Once upon", tools=[]))  # a raw prompt is text


def test_the_chat_reaches_the_parsers_as_vllm_s_server_takes_it() -> None:
    earlier = ToolCall(id="call_9", function={"name": "get_time", "arguments": "{}"})
    req = request(
        messages=[
            ChatMessage(role="user", content="Time?"),
            ChatMessage(role="assistant", tool_calls=[earlier]),
            ChatMessage(role="tool", tool_call_id="call_9", content="noon"),
        ],
        enable_thinking=False,
    )
    chat = chat_request(req, with_tools=True)
    assert chat.tool_choice == "auto" and [t.function.name for t in chat.tools or []] == ["get_weather", "get_time"]
    assert chat.chat_template_kwargs == {"enable_thinking": False, "thinking": False}
    assert chat.include_reasoning
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "tool"]  # type: ignore[index]
    assert chat.messages[1]["tool_calls"][0]["id"] == "call_9"  # type: ignore[index]


def test_a_registry_seed_entry_names_the_parsers_by_vllm_s_names(tmp_path: Path) -> None:
    seed = tmp_path / "models.yaml"
    entry = "  - {id: m, source: s, version: '1', max_model_len: 64"
    other = entry.replace("id: m,", "id: n,")
    seed.write_text(f"models:\n{entry}, tool_call_parser: xlam, reasoning_parser: deepseek_r1}}\n{other}}}\n")
    named, plain = read_seed(seed)
    assert (named.tool_call_parser, named.reasoning_parser) == ("xlam", "deepseek_r1")
    assert (plain.tool_call_parser, plain.reasoning_parser) == (None, None)
    seed.write_text(f"models:\n{entry}, tool_call_parser: 'xlam; DROP TABLE'}}\n")
    with pytest.raises(ValidationError, match="tool_call_parser"):
        read_seed(seed)


class FailingParser:
    """Stands in for a vLLM parser with a fault: it raises at its third step, and on a whole output."""

    def __init__(self, reads: VllmReading) -> None:
        self.reads, self.steps = reads, 0

    def parse_delta(self, text: str, *args: object, finished: bool) -> object:
        self.steps += 1
        if self.steps == 3:
            raise RuntimeError("a parser's fault")
        return self.reads.parser.parse_delta(text, *args, finished=finished)

    def set_prompt_token_ids(self, ids: object) -> None:
        pass

    def parse(self, *args: object, **kwargs: object) -> object:
        raise RuntimeError("a parser's fault")


def test_a_parser_that_raises_leaves_the_rest_of_the_output_as_text(tokenizer: PreTrainedTokenizerFast) -> None:
    parsers = VllmParsers.for_model(None, "deepseek_r1", tokenizer)
    step_texts: list[str] = []
    step_tokens: list[Sequence[int]] = []
    reading = parsers.reading(request(tools=[]), tokenizer.encode(R1_PROMPT), step_texts, step_tokens)
    reading.parser = FailingParser(dataclasses.replace(reading))  # type: ignore[assignment]
    streamed = Streamed()
    for step in ("Hm", ".</think>", "It is", " sunny."):
        step_texts.append(step)
        step_tokens.append(tokenizer.encode(step, add_special_tokens=False))
        streamed.add(reading.feed(step))
    streamed.add(reading.finish())
    assert (streamed.reasoning, streamed.text) == ("Hm.", "It is sunny.")  # from the third step on, as written
    reading.parsers = dataclasses.replace(parsers, parser_class=lambda *_, **__: FailingParser(reading))
    assert reading.whole("Hm.</think>It is sunny.", [], "stop") == (None, "Hm.</think>It is sunny.", None, "stop")


def test_up_refuses_a_registry_entry_whose_parsers_do_not_fit_its_model_before_any_engine_starts(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    tokenizer.save_pretrained(tmp_path / "model")
    entry = {"id": "m", "source": "tiny-random", "version": "1", "max_model_len": 64}
    check_parsers(ModelRecord.model_validate(entry | {"tool_call_parser": "xlam"}), tmp_path / "model")
    check_parsers(ModelRecord.model_validate(entry), tmp_path / "absent")  # no parser named: no tokenizer read
    with pytest.raises(UnknownParser, match="hy_v3"):  # its call markers are not among this tokenizer's tokens
        check_parsers(ModelRecord.model_validate(entry | {"tool_call_parser": "hy_v3"}), tmp_path / "model")
    with pytest.raises(UnknownParser, match="no_such_parser"):
        check_parsers(ModelRecord.model_validate(entry | {"reasoning_parser": "no_such_parser"}), tmp_path / "model")
