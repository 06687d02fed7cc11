"""How a reasoning model's think block is told apart from its answer, streamed or whole."""

from __future__ import annotations

import pytest

from services.worker.reasoning import ReasoningReader, opens_thinking, reasons

QWEN3_PROMPT = "<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"
R1_0528_PROMPT = "<｜User｜>Why?<｜Assistant｜><think>\n"  # the template opens the block itself
NOT_THINKING_PROMPT = QWEN3_PROMPT + "<think>\n\n</think>\n\n"  # Qwen3 with enable_thinking false


def streamed(reader: ReasoningReader, chunks: list[str]) -> tuple[str, str]:
    reasoning = answer = ""
    for chunk in chunks:
        more_reasoning, more_answer = reader.feed(chunk)
        reasoning, answer = reasoning + more_reasoning, answer + more_answer
    rest_reasoning, rest_answer = reader.finish()
    return reasoning + rest_reasoning, answer + rest_answer


CASES = [
    # (prompt, output, reasoning, answer)
    (QWEN3_PROMPT, "<think>\nBlue scatters.\n</think>\n\nRayleigh.", "\nBlue scatters.\n", "Rayleigh."),
    (QWEN3_PROMPT, "<think>a < b</think>Yes", "a < b", "Yes"),
    (QWEN3_PROMPT, "\n<think>late</think>", None, "\n<think>late</think>"),  # a block opens only at the start
    (QWEN3_PROMPT, "An answer with <think> in it.", None, "An answer with <think> in it."),
    (QWEN3_PROMPT, "<thin", None, "<thin"),  # cut short inside the tag: text after all
    (QWEN3_PROMPT, "<think>Cut short by max_tokens </thi", "Cut short by max_tokens </thi", ""),
    (QWEN3_PROMPT, "<think>x</think>\n\n", "x", ""),
    (R1_0528_PROMPT, "Okay, the user asks why.\n</think>\n\nBecause.", "Okay, the user asks why.\n", "Because."),
    (R1_0528_PROMPT, "</think>Empty thoughts", None, "Empty thoughts"),
    (NOT_THINKING_PROMPT, "Because.", None, "Because."),
    (QWEN3_PROMPT, "   ", None, "   "),
]


@pytest.mark.parametrize(("prompt", "output", "reasoning", "answer"), CASES)
def test_reasoning_is_read_whole_and_streamed_alike_however_the_output_is_split(
    prompt: str, output: str, reasoning: str | None, answer: str
) -> None:
    assert ReasoningReader.split_whole(output, prompt, constrained=False) == (reasoning, answer)
    for size in (1, 2, 3, 7, len(output)):
        chunks = [output[i : i + size] for i in range(0, len(output), size)]
        assert streamed(ReasoningReader.for_prompt(prompt, constrained=False), chunks) == (reasoning or "", answer)


def test_a_partial_tag_waits_and_nothing_else_does() -> None:
    reader = ReasoningReader.for_prompt(QWEN3_PROMPT, constrained=False)
    assert reader.feed("<thi") == ("", "")
    assert reader.feed("nk>Let me see") == ("Let me see", "")
    assert reader.feed(", two</") == (", two", "")
    assert reader.feed("think>") == ("", "")
    assert reader.feed("\n\n") == ("", "")  # the space between the block and the answer is dropped
    assert reader.feed("Four.") == ("", "Four.")
    assert reader.state == "answer"
    # an answer never waits: white space at the start is answer at once (a model that writes only white space
    # streams it), as is anything that cannot begin the tag
    assert ReasoningReader.for_prompt(QWEN3_PROMPT, constrained=False).feed("\n") == ("", "\n")
    assert ReasoningReader.for_prompt(QWEN3_PROMPT, constrained=False).feed("<b>") == ("", "<b>")


def test_under_a_grammar_the_output_begins_outside_the_block_even_after_an_opening_prompt() -> None:
    # the grammar constrains from the first token, so what it allows is the answer (a JSON object, say)
    assert ReasoningReader.split_whole('{"a": 1}', R1_0528_PROMPT, constrained=True) == (None, '{"a": 1}')
    # a grammar that lets the model write a block first is still read as one
    assert ReasoningReader.split_whole("<think>hm</think>{}", QWEN3_PROMPT, constrained=True) == ("hm", "{}")


def test_only_the_end_of_the_prompt_opens_a_block() -> None:
    assert opens_thinking(R1_0528_PROMPT)
    assert not opens_thinking(NOT_THINKING_PROMPT)
    assert not opens_thinking("<|im_start|>user\nWhat does <think> mean?<|im_end|>\n<|im_start|>assistant\n")


def test_a_model_reasons_when_its_template_writes_or_strips_think_blocks() -> None:
    qwen3_like = "{% set content = message.content.split('</think>')[-1] %}"
    assert reasons(qwen3_like)
    assert not reasons("{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] }}")
    assert not reasons(None)
