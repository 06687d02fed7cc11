"""gpt-oss's harmony output told apart into reasoning, answer and calls, streamed or whole, as vLLM's server does."""

from __future__ import annotations

import json

import pytest
import xgrammar

from services.worker.harmony import HarmonyReader, harmony_then, speaks_harmony
from services.worker.tool_calls import ToolCallReader, conversation
from shared.contracts import ChatMessage, FunctionCall, ToolCall
from tests.unit.char_tokenizer import char_tokenizer
from tests.unit.test_worker_reasoning import JSON_ANSWER, accepts, streamed
from tests.unit.test_worker_tool_calls import WEATHER, request

THINK = "<|channel|>analysis<|message|>The user asks for the capital. It is Paris.<|end|>"
FINAL = "<|start|>assistant<|channel|>final<|message|>The capital of France is Paris."
CALL = (
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
    '{"city": "Paris \\"Lutetia\\""}'
)

PARIS = "The capital of France is Paris."
THOUGHT = "The user asks for the capital. It is Paris."
CASES = [
    # (output, reasoning (None: none), answer with calls as the call reader reads them)
    (THINK + FINAL, THOUGHT, PARIS),
    # several of a kind are joined with a newline, as vLLM joins them; the final message ends with <|return|> when the
    # engine keeps it, else at the end of the output
    (THINK + THINK + FINAL + "<|return|>", f"{THOUGHT}\n{THOUGHT}", PARIS),
    # a preamble to the user (commentary without a recipient) is answer
    ("<|channel|>commentary<|message|>Let me look.<|end|>" + FINAL, None, f"Let me look.\n{PARIS}"),
    # a message to a built-in tool (browser) is left out, unless in the analysis channel, as vLLM sorts them
    ('<|channel|>commentary to=browser.search<|message|>{"q": "x"}<|end|>' + FINAL, None, PARIS),
    ('<|channel|>analysis to=browser.search<|message|>{"q": "x"}<|end|>' + FINAL, '{"q": "x"}', PARIS),
    # cut short inside its reasoning: all reasoning, and a partial marker is text after all
    ("<|channel|>analysis<|message|>Hmm <|en", "Hmm <|en", ""),
    # cut short inside a header: left out
    (THINK + "<|start|>assistant<|chan", THOUGHT, ""),
    # no header (a grammar held from the first token): all answer
    ('{"answer": 4}', None, '{"answer": 4}'),
    ("   ", None, "   "),
]


@pytest.mark.parametrize(("output", "reasoning", "answer"), CASES)
def test_harmony_is_read_whole_and_streamed_alike_however_the_output_is_split(
    output: str, reasoning: str | None, answer: str
) -> None:
    whole_reasoning, whole_answer, spans = HarmonyReader.split_whole(output, calls=True)
    assert (whole_reasoning, whole_answer) == (reasoning, answer)
    # the spans are where the reasoning lies in the output, to count its tokens
    assert "\n".join(output[a:b] for a, b in spans) == (whole_reasoning or "")
    for size in (1, 2, 3, 7, len(output)):
        chunks = [output[i : i + size] for i in range(0, len(output), size)]
        assert streamed(HarmonyReader(calls=True), chunks) == (whole_reasoning or "", whole_answer), size


def test_a_call_to_a_function_reaches_the_call_reader_with_the_arguments_the_model_wrote() -> None:
    output = THINK + "<|start|>assistant<|channel|>commentary<|message|>Checking.<|end|>" + CALL
    reasoning, answer, _ = HarmonyReader.split_whole(output, calls=True)
    assert reasoning == "The user asks for the capital. It is Paris."
    text, calls, finish_reason = ToolCallReader.read_whole(request(), answer, "stop")
    assert (text, finish_reason) == ("Checking.", "tool_calls")
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls or []] == [
        ("get_weather", {"city": 'Paris "Lutetia"'})
    ]
    # streamed, in any split, the same call
    for size in (1, 5, len(output)):
        reader, calls_reader = HarmonyReader(calls=True), ToolCallReader(request())
        for i in range(0, len(output), size):
            calls_reader.feed(reader.feed(output[i : i + size])[1])
        calls_reader.feed(reader.finish()[1])
        assert calls_reader.finish("stop")[1] == calls, size
    # a bare recipient that is no built-in tool's names a function too, as vLLM reads it
    bare = "<|channel|>commentary to=get_weather<|constrain|>json<|message|>{}"
    assert ToolCallReader.read_whole(request(), HarmonyReader.split_whole(bare, calls=True)[1], "stop")[1]
    # without tools offered, a call is left out, as vLLM leaves it out
    assert HarmonyReader.split_whole(CALL, calls=False)[1] == ""


def test_gpt_oss_s_template_is_told_by_its_channels_and_gets_earlier_reasoning_as_thinking() -> None:
    assert speaks_harmony("{{- '<|start|>assistant<|channel|>final<|message|>' + message.content }}")
    assert not speaks_harmony("{{ '<|im_start|>assistant\\n' }}")
    step = ChatMessage(
        role="assistant",
        content="",
        reasoning="I need the weather.",
        tool_calls=[ToolCall(id="c1", function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}'))],
    )
    turns, _ = conversation([request().messages[0], step], [WEATHER], native=True)
    assert turns[1]["thinking"] == "I need the weather."  # the name gpt-oss's template reads


def test_under_a_grammar_gpt_oss_may_think_in_its_analysis_channel_then_answers_in_its_final_one() -> None:
    grammar = harmony_then(JSON_ANSWER, None)  # vLLM's own grammar for gpt-oss under a response format
    assert grammar is not None
    thought_then_json = THINK + '<|start|>assistant<|channel|>final <|constrain|>json<|message|>{"a": 1}'
    assert accepts(grammar, thought_then_json)
    assert accepts(grammar, '<|channel|>final json<|message|>{"a": 1}<|end|>')  # or answer at once
    assert not accepts(grammar, '{"a": 1}')  # the final message's header first
    assert not accepts(grammar, '<|channel|>final json<|message|>{"a": "one"}')
    assert not accepts(grammar, "<|channel|>commentary<|message|>Hi.<|end|>")  # no other message
    # what it allows is read as thinking, then the answer
    assert HarmonyReader.split_whole(thought_then_json, calls=False)[:2] == (THOUGHT, '{"a": 1}')
    regex = harmony_then({"type": "regex", "pattern": "[A-Z][a-z]+\\."}, 16)
    assert regex is not None and accepts(regex, "<|channel|>final<|message|>Paris.")
    assert harmony_then(None, None) is None  # nothing to hold


def test_a_budget_alone_holds_the_analysis_message_gpt_oss_begins_with_and_leaves_the_rest_free() -> None:
    budgeted = harmony_then(None, 4)
    assert budgeted is not None
    assert accepts(budgeted, THINK + "<|start|>assistant<|channel|>final<|message|>Paris.")
    assert accepts(budgeted, THINK + CALL)  # a call after it, and anything else
    assert accepts(budgeted, "<|channel|>final<|message|>Paris.")  # or no analysis at all
    assert not accepts(budgeted, "<|channel|>analysis<|message|>thinking that never ends")
    # token by token (a token a character here): once the analysis holds four, only its end may follow
    tokenizer = char_tokenizer()
    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    matcher = xgrammar.GrammarMatcher(xgrammar.GrammarCompiler(info).compile_structural_tag(json.dumps(budgeted)))
    for token in tokenizer.encode("<|channel|>analysis<|message|>abcd", add_special_tokens=False):
        assert matcher.accept_token(token)
    mask = xgrammar.allocate_token_bitmask(1, info.vocab_size)
    matcher.fill_next_token_bitmask(mask)
    allowed = [t for t in range(info.vocab_size) if (int(mask[0][t // 32]) >> (t % 32)) & 1]
    assert [tokenizer.decode([t]) for t in allowed] == ["<"]
