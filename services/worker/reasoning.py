"""A reasoning model's thinking, told apart from its answer, as vLLM's ``deepseek_r1`` and ``qwen3`` reasoning parsers
tell them apart: the text inside ``<think>...</think>`` is the reasoning, which reaches the client in ``reasoning``,
and the rest is the answer (``content``, or tool calls).

A model reasons when its chat template writes or strips think blocks (Qwen3, QwQ, DeepSeek R1 and their
distillations). Its output begins inside a think block when the prompt leaves one open (DeepSeek R1-0528's and
Qwen3's thinking-only templates end the generation prompt with ``<think>``); otherwise a block opens only if the output
begins with ``<think>``, so text that merely mentions the tag later stays in the answer. Under a grammar (a JSON
response_format, structured_outputs, a forced tool call) the output is what the grammar allows from its first token,
so it begins outside any block there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from services.worker.tool_calls import longest_tag_start

THINK_START = "<think>"
THINK_END = "</think>"

ReadingState = Literal["opening", "reasoning", "answer"]


def reasons(chat_template: str | None) -> bool:
    """Whether a model thinks in think blocks: its chat template writes or strips them."""
    return THINK_END in (chat_template or "")


def opens_thinking(prompt: str) -> bool:
    """Whether the rendered prompt ends inside a think block, so the output begins as reasoning. Only its end counts:
    a user's text may mention the tag anywhere."""
    return prompt.rstrip().endswith(THINK_START)


@dataclass
class ReasoningReader:
    """Splits an output, as it streams, into reasoning and answer. ``opening``: the output may still begin with
    ``<think>`` (a part of the tag is held until it is known; anything else, white space included, is answer at
    once, so an answer never waits); ``reasoning``: inside the block, a partial ``</think>`` held; ``answer``:
    everything is answer. The white space after ``</think>`` is dropped, as the templates write it between the
    two."""

    state: ReadingState = "opening"
    held: str = ""
    trim_answer: bool = False  # just past </think>: the answer's leading white space is dropped

    @classmethod
    def for_prompt(cls, prompt: str, constrained: bool) -> ReasoningReader:
        return cls("reasoning" if opens_thinking(prompt) and not constrained else "opening")

    def feed(self, text: str) -> tuple[str, str]:
        """The reasoning and the answer that ``text`` adds and that may go to the client now."""
        text, self.held = self.held + text, ""
        reasoning = ""
        if self.state == "opening":
            if text.startswith(THINK_START):
                self.state, text = "reasoning", text[len(THINK_START) :]
            elif THINK_START.startswith(text):  # empty, or a part of the tag: not known yet
                self.held = text
                return "", ""
            else:
                self.state = "answer"
        if self.state == "reasoning":
            end = text.find(THINK_END)
            if end < 0:
                keep = longest_tag_start(text, THINK_END)
                self.held = text[len(text) - keep :]
                return text[: len(text) - keep], ""
            reasoning, text = text[:end], text[end + len(THINK_END) :]
            self.state, self.trim_answer = "answer", True
        if self.trim_answer:
            text = text.lstrip()
            self.trim_answer = not text
        return reasoning, text

    def finish(self) -> tuple[str, str]:
        """What is still held, once the output has ended: a partial tag is text after all."""
        held, self.held = self.held, ""
        if self.state == "reasoning":
            return held, ""
        return "", "" if self.trim_answer else held

    @classmethod
    def split_whole(cls, text: str, prompt: str, constrained: bool) -> tuple[str | None, str]:
        """A whole output's reasoning (None when it has none) and answer, read as a stream reads them."""
        reader = cls.for_prompt(prompt, constrained)
        reasoning, answer = reader.feed(text)
        held_reasoning, held_answer = reader.finish()
        return (reasoning + held_reasoning) or None, answer + held_answer
