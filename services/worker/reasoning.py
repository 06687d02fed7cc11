"""A reasoning model's thinking, told apart from its answer, as vLLM's ``deepseek_r1``, ``qwen3``, ``mistral``,
``seed_oss`` and ``gemma4`` reasoning parsers tell them apart: the text inside ``<think>...</think>`` (Mistral's
Magistral: ``[THINK]...[/THINK]``; Gemma 4: ``<|channel>thought\n...<channel|>``, see GEMMA4_THINK; Seed-OSS:
``<seed:think>...</seed:think>``) is the reasoning, which reaches the client in ``reasoning``, and the rest is the
answer (``content``, or tool calls).

A model reasons when its chat template writes or strips think blocks (Qwen3, QwQ, DeepSeek R1 and their distillations;
Magistral's writes earlier thinking chunks in its markers). Its output begins inside a think block when the prompt
leaves one open (DeepSeek R1-0528's and Qwen3's thinking-only templates end the generation prompt with ``<think>``);
otherwise a block opens only if the output begins with ``<think>``, so text that merely mentions the tag later stays in
the answer. (``<think>`` and ``</think>`` stand for any model's markers here.)

Under a grammar (a JSON response_format, structured_outputs, a forced tool call), the model thinks first and the grammar
holds for the answer after its block, as vLLM's server holds it back until the reasoning parser sees the block end
(``think_then``). A thinking budget (vLLM's ``thinking_token_budget``) caps the block the same way: once it has that
many tokens, only ``</think>`` may follow. Where the prompt already closed the block (thinking switched off) or the
grammar cannot be composed so, the grammar holds from the first token, and the output begins outside any block."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from services.worker.markup import longest_tag_start


class ThinkMarkers(NamedTuple):
    """The texts that open and close a model's think block."""

    start: str
    end: str
    answer_starts: tuple[str, ...] = ()
    """Texts that end the block without ``end`` and begin the answer themselves: the opening of the model's calls, when
    it may call (a call straight from its thoughts ends them, as vLLM's qwen3, glm47, kimi_k2, minimax_m2, gemma4
    and seed_oss parsers read it)."""
    answer_wrap: tuple[str, str] | None = None
    """Tags the model writes around its answer, left out of it (Hunyuan's ``<answer>...</answer>``); what follows
    the closing one is left out too."""

    def block_end(self, text: str, at: int = 0) -> tuple[int, int] | None:
        """Where the block ends in ``text`` (searched from ``at``) and how many characters of marker to drop there:
        ``end``'s, or none before one of ``answer_starts``; None when it does not end in ``text``."""
        found = [(text.find(self.end, at), len(self.end))]
        found += [(text.find(opening, at), 0) for opening in self.answer_starts]
        return min(((where, drop) for where, drop in found if where >= 0), default=None)

    def held_back(self, text: str) -> int:
        """How many characters at the end of ``text`` may begin a text that ends the block."""
        return max(longest_tag_start(text, tag) for tag in (self.end, *self.answer_starts))


THINK = ThinkMarkers("<think>", "</think>")
"""Qwen3's, DeepSeek R1's and most others'."""
MISTRAL_THINK = ThinkMarkers("[THINK]", "[/THINK]")
"""Magistral's (Mistral's tokenizers v13 and later make both special tokens)."""
GEMMA4_THINK = ThinkMarkers("<|channel>thought\n", "<channel|>")
"""Gemma 4's: its thought channel, whose label (``thought`` and a newline) is left out of the reasoning, as vLLM's
``gemma4`` parser leaves it out."""
SEED_THINK = ThinkMarkers("<seed:think>", "</seed:think>")
"""ByteDance's Seed-OSS's."""
HUNYUAN_THINK = THINK._replace(answer_wrap=("<answer>", "</answer>"))
"""Tencent's Hunyuan A13B's: ``<think>`` blocks, then the answer inside ``<answer>...</answer>``, as vLLM's
``hunyuan_a13b`` parser reads them."""
HUNYUAN_TURN_END = "<|extra_0|>"
"""What Hunyuan's templates write after each user turn: no other family's does."""
GRANITE_THINK = ThinkMarkers("Here is my thought process:", "Here is my response:")
"""IBM Granite 3.2's, phrases its template tells it to write when thinking is on, as vLLM's ``granite`` parser reads
them (vLLM also takes ``Here's`` for ``Here is``, seen from quantized models; ferry does not)."""

ReadingState = Literal["opening", "reasoning", "answer"]

ThinkingRoom = Literal["inside", "may_open", "closed"]
"""Where the rendered prompt leaves the output: inside a think block, free to open one, or past a closed one (the
template switched thinking off by writing an empty block)."""

MOST_TOKENS = 2**31 - 1

ANSWER_GAP = r"\s{0,4}"
"""The white space a grammar lets a model write between ``</think>`` and its answer: the templates' two newlines,
with room for carriage returns. Unbounded, a model could spend its tokens on it."""


def think_markers(chat_template: str | None) -> ThinkMarkers | None:
    """How a model marks its think blocks, if it thinks in them: its chat template writes or strips them (None: it
    does not)."""
    template = chat_template or ""
    if THINK.end in template and HUNYUAN_TURN_END in template:
        return HUNYUAN_THINK
    every = (THINK, MISTRAL_THINK, GEMMA4_THINK, SEED_THINK, GRANITE_THINK)
    return next((markers for markers in every if markers.end in template), None)


def template_switches(enable_thinking: bool | None, reasoning_effort: str | None) -> dict[str, Any]:
    """A request's thinking switches, under the names chat templates read them by (see CompletionRequested); none
    that the request leaves unset."""
    switches: dict[str, Any] = {}
    if enable_thinking is not None:
        switches |= {"enable_thinking": enable_thinking, "thinking": enable_thinking}
    if reasoning_effort is not None:
        switches["reasoning_effort"] = reasoning_effort
    return switches


def thinking_room(prompt: str, markers: ThinkMarkers) -> ThinkingRoom:
    """Where the rendered prompt leaves the output. Only its end counts: a user's text may mention the tags
    anywhere."""
    end = prompt.rstrip()
    if end.endswith(markers.start.rstrip()):
        return "inside"
    return "closed" if end.endswith(markers.end) else "may_open"


def thinking_text(budget: int | None) -> dict[str, Any]:
    """The text a model may think (xgrammar's structural-tag format): any, at most ``budget`` tokens when set."""
    # xgrammar counts in 32 bits; a budget beyond max_tokens limits nothing anyway
    return {"type": "any_text"} | ({"max_tokens": min(budget, MOST_TOKENS)} if budget is not None else {})


def think_then(
    answer: dict[str, Any] | None, room: ThinkingRoom, budget: int | None, markers: ThinkMarkers
) -> dict[str, Any] | None:
    """A grammar (xgrammar's structural-tag format) that lets the model think, at most ``budget`` tokens when set,
    then holds the answer to ``answer`` (a format of the same kind; None: any text). None where there is nothing
    to hold: thinking is closed, or neither an answer's grammar nor a budget is asked for."""
    if room == "closed" or (answer is None and budget is None):
        return None
    if room == "may_open" and answer is None:  # a budget alone: see budget_alone
        return budget_alone(budget, markers)
    thinking = thinking_text(budget)
    # inside: the prompt wrote <think>, so the block is the output's start up to </think>
    block: dict[str, Any] = {
        "type": "tag",
        "begin": markers.start if room == "may_open" else "",
        "content": thinking,
        "end": markers.end,
    }
    if room == "may_open":
        block = {"type": "optional", "content": block}
    gap = {"type": "regex", "pattern": ANSWER_GAP}
    if answer is not None and markers.answer_wrap is not None:  # the model may wrap its answer (see answer_wrap)
        opening, closing = markers.answer_wrap
        answer = {
            "type": "sequence",
            "elements": [
                {"type": "optional", "content": {"type": "sequence", "elements": [_const(opening), gap]}},
                answer,
                {"type": "optional", "content": {"type": "sequence", "elements": [gap, _const(closing)]}},
            ],
        }
    elements = [block, gap, answer or {"type": "any_text"}]
    return {"type": "structural_tag", "format": {"type": "sequence", "elements": elements}}


def _const(text: str) -> dict[str, Any]:
    return {"type": "const_string", "value": text}


@dataclass
class ReasoningReader:
    """Splits an output, as it streams, into reasoning and answer. ``opening``: the output may still begin with
    the block's opening marker (a part of it is held until it is known; anything else, white space included, is
    answer at once, so an answer never waits); ``reasoning``: inside the block, a partial closing marker held;
    ``answer``: everything is answer. The white space after the closing marker is dropped, as the templates write
    it between the two. A model that wraps its answer (``ThinkMarkers.answer_wrap``) has the tags left out, and the
    white space inside them, whether it thought first or not."""

    markers: ThinkMarkers
    state: ReadingState = "opening"
    held: str = ""
    trim_answer: bool = False  # just past the block's end: the answer's leading white space is dropped
    wrap: Literal["before", "inside", "after", "none"] = "before"  # where the answer is in its wrap, if any

    @classmethod
    def for_prompt(cls, prompt: str, grammar_first: bool, markers: ThinkMarkers) -> ReasoningReader:
        """``grammar_first``: a grammar holds from the output's first token (see the module's notes)."""
        inside = thinking_room(prompt, markers) == "inside" and not grammar_first
        return cls(markers, "reasoning" if inside else "opening")

    def feed(self, text: str) -> tuple[str, str]:
        """The reasoning and the answer that ``text`` adds and that may go to the client now."""
        start = self.markers.start
        text, self.held = self.held + text, ""
        reasoning = ""
        if self.state == "opening":
            if text.startswith(start):
                self.state, text = "reasoning", text[len(start) :]
            elif start.startswith(text):  # empty, or a part of the marker: not known yet
                self.held = text
                return "", ""
            else:
                self.state = "answer"
        if self.state == "reasoning":
            block_end = self.markers.block_end(text)
            if block_end is None:
                keep = self.markers.held_back(text)
                self.held = text[len(text) - keep :]
                return text[: len(text) - keep], ""
            end, drop = block_end
            reasoning, text = text[:end], text[end + drop :]
            self.state, self.trim_answer = "answer", True
        if self.trim_answer:
            text = text.lstrip()
            self.trim_answer = not text
        if self.markers.answer_wrap is not None and self.state == "answer":
            text = self._unwrapped(text)
        return reasoning, text

    def _unwrapped(self, text: str) -> str:
        """The answer ``text`` adds, without its wrap's tags and the white space inside them (held while not known):
        none before the wrap opens, nothing after it closes."""
        assert self.markers.answer_wrap is not None
        opening, closing = self.markers.answer_wrap
        if self.wrap == "before":
            unspaced = text.lstrip()
            if unspaced.startswith(opening):
                text, self.wrap = unspaced[len(opening) :].lstrip(), "inside"
                self.trim_answer = not text
            elif opening.startswith(unspaced):  # empty, or a part of the tag: not known yet
                self.held = text
                return ""
            else:
                self.wrap = "none"
        if self.wrap == "inside":
            if (end := text.find(closing)) >= 0:
                self.wrap = "after"
                return text[:end].rstrip()
            kept = text[: len(text) - longest_tag_start(text, closing)].rstrip()  # the space before it waits too
            text, self.held = kept, text[len(kept) :]
        return "" if self.wrap == "after" else text

    def finish(self) -> tuple[str, str]:
        """What is still held, once the output has ended: a partial marker is text after all."""
        held, self.held = self.held, ""
        if self.state == "reasoning":
            return held, ""
        return "", "" if self.trim_answer else held

    @classmethod
    def span(cls, text: str, prompt: str, grammar_first: bool, markers: ThinkMarkers) -> tuple[int, int] | None:
        """Where a whole output's reasoning lies in it, in characters (markers left out), as ``split_whole`` reads
        it; None when it has none."""
        start = 0
        if cls.for_prompt(prompt, grammar_first, markers).state == "opening":
            if not text.startswith(markers.start):
                return None
            start = len(markers.start)
        block_end = markers.block_end(text, start)
        return start, block_end[0] if block_end is not None else len(text)

    @classmethod
    def split_whole(
        cls, text: str, prompt: str, grammar_first: bool, markers: ThinkMarkers
    ) -> tuple[str | None, str, list[tuple[int, int]]]:
        """A whole output's reasoning (None when it has none), its answer, and where the reasoning lies in it (as
        HarmonyReader.split_whole gives them), read as a stream reads them."""
        reader = cls.for_prompt(prompt, grammar_first, markers)
        reasoning, answer = reader.feed(text)
        held_reasoning, held_answer = reader.finish()
        span = cls.span(text, prompt, grammar_first, markers)
        return (reasoning + held_reasoning) or None, answer + held_answer, [span] if span else []


def budget_alone(budget: int | None, markers: ThinkMarkers) -> dict[str, Any]:
    """A thinking budget with no grammar for the answer, where the output may open a block (or gpt-oss's analysis
    message, see harmony): either the output opens one, which holds at most ``budget`` tokens, and then any text
    follows; or it begins otherwise, and all of it is free (a later mention of the marker included, as the reader
    takes it: see ReasoningReader). Written as the first characters where the output leaves the marker, so that a
    free output cannot begin with it: with an optional block and any text after it, the text's branch took an
    opened block too, and the budget held nothing."""
    block = {"type": "tag", "begin": markers.start, "content": thinking_text(budget), "end": markers.end}
    thought = {"type": "sequence", "elements": [block, {"type": "regex", "pattern": ANSWER_GAP}, {"type": "any_text"}]}
    leaves = {"type": "regex", "pattern": _leaving(markers.start)}
    other = {"type": "optional", "content": {"type": "sequence", "elements": [leaves, {"type": "any_text"}]}}
    return {"type": "structural_tag", "format": {"type": "or", "elements": [thought, other]}}


def _leaving(marker: str) -> str:
    """A regular expression of the texts that begin as ``marker`` does and leave it at some character, up to that
    character: ``[^<]|<[^t]|<t[^h]|...`` for ``<think>``."""
    prefix = [_literal(c, _REGEX_SPECIAL) for c in marker]
    return "|".join(
        "".join(prefix[:at]) + "[^" + _literal(marker[at], _CLASS_SPECIAL) + "]" for at in range(len(marker))
    )


_REGEX_SPECIAL = "\\.^$|?*+()[]{}-/"
_CLASS_SPECIAL = "\\]^-["


def _literal(character: str, special: str) -> str:
    """``character`` in a regular expression, where the characters of ``special`` must be escaped."""
    controls = {"\n": r"\n", "\t": r"\t", "\r": r"\r"}
    return controls.get(character) or ("\\" + character if character in special else character)
