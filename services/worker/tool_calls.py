"""Tool calling: how a chat with tools is shown to the model, and how the calls are read back out of its text.

The format is Hermes's, which Qwen2.5 and Hermes models are trained on and vLLM's ``hermes`` parser reads: the tools'
signatures inside ``<tools></tools>`` in the system turn, each call written as ``<tool_call>{"name": ..., "arguments":
{...}}</tool_call>``, each result given back inside ``<tool_response></tool_response>``. A model whose own chat
template renders tools gets them through its template; any other model gets the same instructions written into its
system turn, as LiteLLM does for models without native function calling.

Forced calls (tool_choice required, or a named function) are generated under a JSON schema, so they always parse and
their arguments match the schema: a JSON array of ``{"name", "arguments"}`` objects (required), or the arguments
object alone (a named function), as vLLM's server does it."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.contracts import ChatMessage, CompletionRequested, FinishReason, FunctionCall, FunctionTool, ToolCall

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL_BLOCK = re.compile(re.escape(CALL_OPEN) + r"(.*?)(?:" + re.escape(CALL_CLOSE) + r"|$)", re.DOTALL)

ToolMode = Literal["text", "auto", "required", "named"]
"""How a request's output is read: text (no tools shown), auto (the model may write calls), required (a forced JSON
array of calls), named (the forced arguments of one function)."""


def tool_mode(request: CompletionRequested) -> ToolMode:
    if not request.tools or request.tool_choice == "none":
        return "text"
    if request.tool_choice == "auto":
        return "auto"
    return "named" if request.tool_choice_function is not None else "required"


def _parameters(tool: FunctionTool) -> dict[str, Any]:
    return tool.parameters if tool.parameters is not None else {"type": "object"}


def _tool_json(tool: FunctionTool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    function["parameters"] = _parameters(tool)
    return {"type": "function", "function": function}


def _arguments_value(arguments: str) -> Any:
    """A call's arguments as templates and the Hermes format show them: the object, or the text when it is not JSON."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def tools_instructions(tools: list[FunctionTool]) -> str:
    """The system turn's tool instructions, in Qwen2.5's words."""
    signatures = "\n".join(json.dumps(_tool_json(t), ensure_ascii=False) for t in tools)
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        f"You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{signatures}\n</tools>"
        "\n\nFor each function call, return a json object with function name and arguments within "
        f'{CALL_OPEN}{CALL_CLOSE} XML tags:\n{CALL_OPEN}\n{{"name": <function-name>, "arguments": '
        f"<args-json-object>}}\n{CALL_CLOSE}"
    )


def conversation(
    messages: list[ChatMessage], tools: list[FunctionTool], native: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The turns to give the chat template, and the tools to pass it (None: none). ``native``: the template renders
    tools, tool calls and tool turns itself; else they are written into the turns in the Hermes format."""
    if native:
        turns = []
        for m in messages:
            turn: dict[str, Any] = {"role": m.role, "content": m.content}
            if m.tool_calls:
                turn["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.function.name, "arguments": _arguments_value(c.function.arguments)},
                    }
                    for c in m.tool_calls
                ]
            if m.tool_call_id is not None:
                turn["tool_call_id"] = m.tool_call_id
            turns.append(turn)
        return turns, [_tool_json(t) for t in tools] or None
    turns = []
    for i, m in enumerate(messages):
        if m.role == "tool":
            response = f"<tool_response>\n{m.content}\n</tool_response>"
            if i > 0 and messages[i - 1].role == "tool":  # results of one turn's calls go back together
                turns[-1]["content"] += "\n" + response
            else:
                turns.append({"role": "user", "content": response})
            continue
        content = m.content
        for call in m.tool_calls:
            written = json.dumps(
                {"name": call.function.name, "arguments": _arguments_value(call.function.arguments)},
                ensure_ascii=False,
            )
            separator = "\n" if content else ""
            content += f"{separator}{CALL_OPEN}\n{written}\n{CALL_CLOSE}"
        turns.append({"role": m.role, "content": content})
    if tools:
        instructions = tools_instructions(tools)
        if turns and turns[0]["role"] == "system":
            turns[0]["content"] = f"{turns[0]['content']}\n\n{instructions}"
        else:
            turns.insert(0, {"role": "system", "content": instructions})
    return turns, None


def forced_schema(request: CompletionRequested) -> dict[str, Any] | None:
    """The JSON schema a forced call is generated under; None when calls are not forced."""
    mode = tool_mode(request)
    if mode == "named":
        (tool,) = (t for t in request.tools if t.name == request.tool_choice_function)
        return _parameters(tool)
    if mode != "required":
        return None
    call_schemas = [
        {
            "type": "object",
            "properties": {"name": {"type": "string", "enum": [t.name]}, "arguments": _parameters(t)},
            "required": ["name", "arguments"],
        }
        for t in request.tools
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": call_schemas}}
    if not request.parallel_tool_calls:
        schema["maxItems"] = 1
    return schema


def _compact(arguments: str) -> str:
    """JSON arguments written the one way every call's are (the model may spread them over lines); else as written."""
    try:
        return json.dumps(json.loads(arguments), ensure_ascii=False)
    except ValueError:
        return arguments


def call_id(request_id: str, index: int) -> str:
    """A call's id, the same each time the request is generated (a redelivered request then names its calls alike)."""
    return "call_" + hashlib.sha256(f"{request_id}:{index}".encode()).hexdigest()[:24]


def _longest_tag_start(text: str) -> int:
    """How many characters at the end of ``text`` could begin a call's opening tag."""
    for length in range(min(len(CALL_OPEN) - 1, len(text)), 0, -1):
        if CALL_OPEN.startswith(text[-length:]):
            return length
    return 0


@dataclass
class ToolCallReader:
    """Splits a request's output, as it streams, into text for the client and tool calls. In auto mode, text streams
    until a call's opening tag, and the rest is held until the end; in the forced modes the whole output is the call.
    Held text that does not turn out to be calls of the request's tools is given back as text, so nothing is lost."""

    request: CompletionRequested
    mode: ToolMode = field(init=False)
    held: str = ""
    calling: bool = False

    def __post_init__(self) -> None:
        self.mode = tool_mode(self.request)

    def feed(self, text: str) -> str:
        """The part of ``text`` that may go to the client now."""
        if self.mode == "text":
            return text
        if self.mode != "auto" or self.calling:
            self.held += text
            return ""
        text, self.held = self.held + text, ""
        if (start := text.find(CALL_OPEN)) >= 0:
            self.calling, self.held = True, text[start:]
            return text[:start]
        keep = _longest_tag_start(text)
        if keep:
            text, self.held = text[:-keep], text[-keep:]
        return text

    @classmethod
    def read_whole(
        cls, request: CompletionRequested, text: str, finish_reason: FinishReason
    ) -> tuple[str, list[ToolCall] | None, FinishReason]:
        """A whole output's text for the client, its calls and its finish reason: what ``feed`` and ``finish`` give
        when it streams, read at once."""
        reader = cls(request)
        released = reader.feed(text)
        rest, calls, reason = reader.finish(finish_reason)
        return released + rest, calls, reason

    def finish(self, finish_reason: FinishReason) -> tuple[str, list[ToolCall] | None, FinishReason]:
        """The text still to give the client, the calls (None: none), and the finish reason to report: tool_calls
        when the model ended by calling (OpenAI keeps stop for a named function, whose call was not the model's
        choice)."""
        held, self.held = self.held, ""
        if self.mode == "text":
            return held, None, finish_reason
        calls = self._calls(held, finish_reason)
        if calls is None:
            return held, None, finish_reason
        ended_by_calling = finish_reason == "stop" and self.mode != "named"
        return "", calls, "tool_calls" if ended_by_calling else finish_reason

    def _calls(self, held: str, finish_reason: FinishReason) -> list[ToolCall] | None:
        if self.mode == "named":
            assert self.request.tool_choice_function is not None
            # cut short by max_tokens, the arguments are given as written, as OpenAI does
            written = [(self.request.tool_choice_function, _compact(held.strip()))]
        else:
            found = self._written_calls(held)
            if not found:
                return None
            written = found if self.request.parallel_tool_calls else found[:1]
        return [
            ToolCall(id=call_id(self.request.request_id, i), function=FunctionCall(name=name, arguments=arguments))
            for i, (name, arguments) in enumerate(written)
        ]

    def _written_calls(self, held: str) -> list[tuple[str, str]] | None:
        """(name, arguments) of each call in ``held``; None unless every one is a well-formed call of a known tool."""
        if self.mode == "required":
            try:
                objects = json.loads(held)
            except ValueError:
                return None
            if not isinstance(objects, list):
                return None
        else:
            objects = []
            for block in _CALL_BLOCK.findall(held):
                try:
                    objects.append(json.loads(block))
                except ValueError:
                    return None
        names = {t.name for t in self.request.tools}
        calls = []
        for obj in objects:
            if not isinstance(obj, dict) or obj.get("name") not in names:
                return None
            arguments = obj.get("arguments", {})
            if not isinstance(arguments, dict):
                return None
            calls.append((obj["name"], json.dumps(arguments, ensure_ascii=False)))  # as _compact writes them
        return calls or None
