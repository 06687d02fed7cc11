"""gpt-oss's output in OpenAI's harmony format, told apart as vLLM's server tells it apart (its ``openai_harmony``
parser): the output is a run of messages, each a header (its channel, perhaps a recipient) then ``<|message|>`` and
its text, ended by ``<|end|>`` (or ``<|call|>`` / ``<|return|>``, which end generation):

    <|channel|>analysis<|message|>The user asks ...<|end|><|start|>assistant<|channel|>final<|message|>Paris.

- the ``analysis`` channel is the model's reasoning (``reasoning``);
- the ``final`` channel, and ``commentary`` with no recipient (a preamble for the user), is the answer (``content``);
- a message to ``functions.NAME`` (``<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}``) is a
  call of that function, its text the arguments;
- anything else (built-in tools such as ``browser``) is left out, as vLLM leaves it out of chat completions.

Several messages of one kind are joined with a newline, as vLLM joins them. An output that does not begin with a
header (under a grammar that holds from the first token) is all answer. The markers are special tokens, kept in the
text for such a model (``Engine.speaks_harmony``).

Calls are handed on to the call reader (``tool_calls.ToolCallReader``) in the Hermes form it reads, their arguments as
the JSON string of what the model wrote: one reader of calls serves every format, and text that is not JSON reaches
the client as the model wrote it, as vLLM gives it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from services.worker.markup import longest_tag_start
from services.worker.reasoning import ThinkMarkers, budget_alone, thinking_text
from services.worker.tool_calls import CALL_CLOSE, CALL_OPEN

START, CHANNEL, MESSAGE, END = "<|start|>", "<|channel|>", "<|message|>", "<|end|>"
ENDS = (END, "<|call|>", "<|return|>")
FUNCTIONS = "functions."
BUILT_IN_TOOLS = ("python", "browser", "container")
ANALYSIS_BEGIN, ASSISTANT = "<|channel|>analysis<|message|>", "<|start|>assistant"
FINAL_BEGIN, FINAL_JSON_BEGINS = (
    "<|channel|>final<|message|>",
    ("<|channel|>final json<|message|>", "<|channel|>final <|constrain|>json<|message|>"),
)
MOST_HEADER_CHARS = 512  # a header this long without <|message|> is no header: the rest is answer text

_RECIPIENT = re.compile(r"to=([^\s<]+)")
_CHANNEL = re.compile(r"<\|channel\|>([^\s<]+)")

Kind = Literal["reasoning", "content", "call", "ignored"]


def speaks_harmony(chat_template: str | None) -> bool:
    """Whether a model writes harmony: its template writes channels (gpt-oss's)."""
    template = chat_template or ""
    return CHANNEL in template and MESSAGE in template


def calls_a_function(recipient: str | None) -> bool:
    """Whether a message's recipient is a function, as vLLM's chat completions read it: ``functions.NAME``, or a bare
    name that is not a built-in tool's (``browser.search``) nor the assistant."""
    if not recipient or recipient.startswith("<|") or recipient == "assistant":
        return False
    if recipient.startswith(FUNCTIONS):
        return len(recipient) > len(FUNCTIONS)
    return recipient.split(".", 1)[0] not in BUILT_IN_TOOLS


def message_kind(channel: str | None, recipient: str | None) -> Kind:
    """What a message is, as vLLM's parser sorts them."""
    if calls_a_function(recipient):
        return "call"
    if channel == "analysis":
        return "reasoning"
    if channel == "final" or (channel == "commentary" and recipient is None):
        return "content"
    return "ignored"


def harmony_then(answer: dict[str, Any] | None, budget: int | None) -> dict[str, Any] | None:
    """A grammar (xgrammar's structural-tag format) that lets a harmony model think in its analysis channel, at most
    ``budget`` tokens when set, then holds its final message to ``answer``: vLLM's own grammar for gpt-oss under a
    response format. Without an answer's grammar, a budget alone holds the analysis message the output begins with,
    and what follows is free, calls and later analysis messages included (see reasoning.budget_alone)."""
    if answer is None:
        return budget_alone(budget, ThinkMarkers(ANALYSIS_BEGIN, END)) if budget is not None else None
    thinking = {"type": "tag", "begin": ANALYSIS_BEGIN, "content": thinking_text(budget), "end": END}
    then = {"type": "const_string", "value": ASSISTANT}  # the final message's start
    analysis = {"type": "optional", "content": {"type": "sequence", "elements": [thinking, then]}}
    ends = [END, ""]  # "": the end of generation (gpt-oss's stop tokens)
    final: dict[str, Any]
    if answer["type"] == "json_schema":
        final = {
            "type": "or",
            "elements": [{"type": "tag", "begin": b, "content": answer, "end": ends} for b in FINAL_JSON_BEGINS],
        }
    else:
        final = {"type": "tag", "begin": FINAL_BEGIN, "content": answer, "end": ends}
    return {"type": "structural_tag", "format": {"type": "sequence", "elements": [analysis, final]}}


@dataclass
class HarmonyReader:
    """Splits a harmony output, as it streams, into reasoning and answer text (with calls in the Hermes form when
    ``calls`` is set, else left out). ``feed`` and ``finish`` give what may go to the client now; a partial marker
    or header is held until it is known."""

    calls: bool = False
    state: Literal["start", "header", "body", "plain"] = "start"
    held: str = ""
    kind: Kind = "ignored"
    spans: list[tuple[int, int]] = field(default_factory=list)  # where the reasoning lies in the output
    _read: int = 0  # characters of the output consumed
    _written: set[str] = field(default_factory=set)  # kinds that already had a message, for the newline between

    def feed(self, text: str) -> tuple[str, str]:
        """The reasoning and the answer that ``text`` adds."""
        text, self.held = self.held + text, ""
        reasoning, answer = [], []
        while text:
            if self.state == "plain":
                answer.append(text)
                self._read += len(text)
                break
            if self.state == "start":
                head = text.lstrip()
                if head.startswith((CHANNEL, START, "to=")):
                    self.state = "header"
                    continue
                if any(marker.startswith(head) for marker in (CHANNEL, START, "to=")):
                    self.held = text  # perhaps a header: not known yet
                    break
                self.state = "plain"
                continue
            if self.state == "header":
                at = text.find(MESSAGE)
                if at < 0:
                    if len(text) > MOST_HEADER_CHARS:
                        self.state = "plain"
                        continue
                    self.held = text
                    break
                self._open(text[:at], reasoning, answer)
                self._read += at + len(MESSAGE)
                text = text[at + len(MESSAGE) :]
                self.state = "body"
                continue
            # body: up to the first end marker; a partial one is held
            ends = [(i, marker) for marker in ENDS if (i := text.find(marker)) >= 0]
            if ends:
                at, marker = min(ends)
                self._body(text[:at], reasoning, answer)
                self._close(answer)
                self._read += len(marker)
                text = text[at + len(marker) :]
                self.state = "header"
                continue
            keep = max(longest_tag_start(text, marker) for marker in ENDS)
            self._body(text[: len(text) - keep], reasoning, answer)
            self.held = text[len(text) - keep :]
            break
        return "".join(reasoning), "".join(answer)

    def finish(self) -> tuple[str, str]:
        """What is still held, once the output has ended: the rest of a message cut short (a partial marker was text
        after all); a header cut short is left out."""
        held, self.held = self.held, ""
        reasoning: list[str] = []
        answer: list[str] = []
        if self.state == "body":
            self._body(held, reasoning, answer)
            self._close(answer)
        elif self.state in ("start", "plain"):
            answer.append(held)
        self.state = "header"
        return "".join(reasoning), "".join(answer)

    @classmethod
    def split_whole(cls, text: str, calls: bool) -> tuple[str | None, str, list[tuple[int, int]]]:
        """A whole output's reasoning (None when it has none), its answer, and where the reasoning lies in it, read as
        a stream reads them."""
        reader = cls(calls)
        reasoning, answer = reader.feed(text)
        rest_reasoning, rest_answer = reader.finish()
        return (reasoning + rest_reasoning) or None, answer + rest_answer, reader.spans

    def _open(self, header: str, reasoning: list[str], answer: list[str]) -> None:
        recipient = match.group(1) if (match := _RECIPIENT.search(header)) else None
        channel = match.group(1) if (match := _CHANNEL.search(header)) else None
        self.kind = message_kind(channel, recipient)
        if self.kind == "call" and not self.calls:
            self.kind = "ignored"
        if self.kind == "call":
            assert recipient is not None
            name = json.dumps(recipient.removeprefix(FUNCTIONS), ensure_ascii=False)
            answer.append(f'{CALL_OPEN}{{"name": {name}, "arguments": "')
        elif self.kind != "ignored" and self.kind in self._written:
            # joined with a newline to the message of its kind before, as vLLM joins them
            (answer if self.kind == "content" else reasoning).append("\n")
        if self.kind in ("reasoning", "content"):
            self._written.add(self.kind)

    def _body(self, text: str, reasoning: list[str], answer: list[str]) -> None:
        start = self._read
        self._read += len(text)
        if self.kind == "reasoning":
            if text:
                reasoning.append(text)
                if self.spans and self.spans[-1][1] == start:
                    self.spans[-1] = (self.spans[-1][0], self._read)
                else:
                    self.spans.append((start, self._read))
        elif self.kind == "content":
            answer.append(text)
        elif self.kind == "call":
            answer.append(json.dumps(text, ensure_ascii=False)[1:-1])

    def _close(self, answer: list[str]) -> None:
        if self.kind == "call":
            answer.append(f'"}}{CALL_CLOSE}')
        self.kind = "ignored"
