"""Tool calling: how a chat with tools is shown to the model, and how the calls are read back out of its text.

The format is Hermes's, which Qwen2.5 and Hermes models are trained on and vLLM's ``hermes`` parser reads: the tools'
signatures inside ``<tools></tools>`` in the system turn, each call written as ``<tool_call>{"name": ..., "arguments":
{...}}</tool_call>``, each result given back inside ``<tool_response></tool_response>``. A model whose own chat
template renders tools gets them through its template; any other model gets the same instructions written into its
system turn, as LiteLLM does for models without native function calling. A template that teaches Llama 3's format
(``call_format``) has its model's calls read in that format instead: ``{"name": ..., "parameters": {...}}`` as the
whole answer, as vLLM's ``llama3_json`` parser reads them; a Mistral template's, after ``[TOOL_CALLS]``, as vLLM's
``mistral`` parser reads them; a pythonic template's, a Python list of calls, as vLLM's ``pythonic`` parser does;
Qwen3-Coder's, XML inside ``<tool_call>``, as vLLM's ``qwen3_coder`` parser does; DeepSeek's, between its
``<｜tool▁calls▁begin｜>`` markers, as vLLM's ``deepseek_v3`` and ``deepseek_v31`` parsers do; GLM's, keys and values
inside ``<tool_call>``, as vLLM's ``glm45`` and ``glm47`` parsers do; Kimi K2's, in its ``<|tool_calls_section_begin|>``
section, as vLLM's ``kimi_k2`` parser does; MiniMax M2's, ``<invoke>`` inside ``<minimax:tool_call>``, as vLLM's
``minimax_m2`` parser does; Granite 3's, a JSON array of calls as the whole answer, as vLLM's ``granite`` parser
does; Jamba's, a JSON array inside ``<tool_calls>``, as vLLM's ``jamba`` parser does; Gemma 4's, each
``<|tool_call>call:NAME{...}<tool_call|>`` in its own notation (see gemma4), as vLLM's ``gemma4`` parser does;
LFM2's, a Python list of calls inside ``<|tool_call_start|>...<|tool_call_end|>``, as vLLM's ``lfm2`` parser does;
Seed-OSS's, Qwen3-Coder's XML inside ``<seed:tool_call>``, as vLLM's ``seed_oss`` parser does; DeepSeek V3.2's and
V4's DSML (their prompts come from vLLM's encoders for them, not from a template: ``DSML_FORMATS``), as vLLM's
``deepseek_v32``, ``deepseek_v4`` and ``deepseek_v41`` parsers do.

Forced calls (tool_choice required, or a named function) are generated under a JSON schema, so they always parse and
their arguments match the schema: a JSON array of ``{"name", "arguments"}`` objects (required), or the arguments
object alone (a named function), as vLLM's server does it."""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from services.worker.gemma4 import CALL as GEMMA4_CALL
from services.worker.gemma4 import gemma4_calls
from services.worker.markup import SPACE, longest_tag_start, open_arguments, skip_space
from shared.contracts import (
    ChatMessage,
    CompletionRequested,
    FinishReason,
    FunctionCall,
    FunctionTool,
    ToolCall,
    ToolCallPiece,
)

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
MISTRAL_CALLS, MISTRAL_ARGS, MISTRAL_CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"

ToolCallFormat = Literal[
    "hermes",
    "llama3_json",
    "mistral",
    "pythonic",
    "qwen3_xml",
    "deepseek",
    "glm",
    "kimi_k2",
    "minimax",
    "granite",
    "jamba",
    "gemma4",
    "lfm2",
    "seed_oss",
    "deepseek_v32",
    "deepseek_v4",
    "deepseek_v41",
    "phi4_mini",
    "internlm2",
    "olmo3",
]
"""How a model writes calls when it may choose to (auto): hermes, each call inside ``<tool_call></tool_call>``,
anywhere in its answer; llama3_json (Llama 3.1 to 3.3, vLLM's ``llama3_json`` parser), the answer is the calls, each
``{"name": ..., "parameters": {...}}``, several joined by ``;``, perhaps after ``<|python_tag|>``; mistral (Mistral 7B
v0.3, Mixtral 8x22B, Nemo, Small 2409, as vLLM's ``mistral`` parser reads them), the calls follow the
``[TOOL_CALLS]`` token, perhaps after some text: as a JSON array of ``{"name": ..., "arguments": {...}}`` (tokenizers
before v11), or each as ``name[ARGS]{...}`` after a ``[TOOL_CALLS]`` of its own (v11 and later, Small 3.2 and
Magistral). Those tokens are special ones, which the engine keeps in the text only when asked
(``keeps_special_tokens``); pythonic (Llama 3.2 and Llama 4 with vLLM's pythonic templates, Gemma 3's, ToolACE:
vLLM's ``pythonic`` and ``llama4_pythonic`` parsers), the answer is a Python list of calls with keyword arguments,
``[get_weather(city="Paris"), get_time()]``, perhaps inside ``<|python_start|>...<|python_end|>``; qwen3_xml
(Qwen3-Coder, vLLM's ``qwen3_coder`` parser), each call inside ``<tool_call></tool_call>`` as
``<function=NAME><parameter=KEY>value</parameter>...</function>``, each value as plain text, read as its parameter's
type in the tool's schema; deepseek (DeepSeek V3, R1 and V3.1, vLLM's ``deepseek_v3`` and ``deepseek_v31``
parsers), the calls between ``<｜tool▁calls▁begin｜>`` and ``<｜tool▁calls▁end｜>``, perhaps after some text, each
``<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME`` then its arguments in a json code fence (V3, R1), or
``<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}`` (V3.1), up to ``<｜tool▁call▁end｜>``; glm (GLM-4.5, 4.6 and 4.7,
vLLM's ``glm45`` and ``glm47`` parsers), each call inside ``<tool_call></tool_call>`` as the function's name, then
``<arg_key>KEY</arg_key><arg_value>value</arg_value>`` for each argument (newlines between them or not), each value
read as its parameter's type in the tool's schema, as qwen3_xml's; kimi_k2 (Kimi K2, vLLM's ``kimi_k2`` parser), the
calls inside ``<|tool_calls_section_begin|>...<|tool_calls_section_end|>``, each
``<|tool_call_begin|>functions.NAME:INDEX<|tool_call_argument_begin|>{...}<|tool_call_end|>``, its header being the
call's id; minimax (MiniMax M2, vLLM's ``minimax_m2`` parser), the calls inside
``<minimax:tool_call>...</minimax:tool_call>``, each ``<invoke name="NAME">`` then
``<parameter name="KEY">value</parameter>`` for each argument, up to ``</invoke>``, each value read as its parameter's
type in the tool's schema; granite (Granite 3.0 to 3.3, vLLM's ``granite`` parser), the answer is the calls, a JSON
array of ``{"name": ..., "arguments": {...}}``, perhaps after ``<|tool_call|>`` (or Granite 3.1's ``<tool_call>``);
jamba (AI21's Jamba 1.5 and later, vLLM's ``jamba`` parser), the calls follow some text or none, as a JSON array of
the same objects inside ``<tool_calls>...</tool_calls>``; gemma4 (Gemma 4, vLLM's ``gemma4`` parser), after some
text or none, each call ``<|tool_call>call:NAME{key:value,...}<tool_call|>`` in Gemma's notation (see gemma4); lfm2
(Liquid's LFM2 and LFM2.5, vLLM's ``lfm2`` parser), after some text or none, a pythonic list of calls inside
``<|tool_call_start|>...<|tool_call_end|>``; seed_oss (ByteDance's Seed-OSS, vLLM's ``seed_oss`` parser), qwen3_xml's
calls inside ``<seed:tool_call></seed:tool_call>``; deepseek_v32, deepseek_v4 and deepseek_v41 (DeepSeek V3.2, V4 and
V4.1, vLLM's parsers of those names), the DSML calls inside ``<｜DSML｜function_calls>`` (V3.2),
``<｜DSML｜tool_calls>`` (V4) or ``<｜DSML｜ calls>`` (V4.1, whose tags all have that space), each ``<｜DSML｜invoke
name="NAME">`` then ``<｜DSML｜parameter name="KEY" string="true">value</｜DSML｜parameter>`` for each argument, up to
``</｜DSML｜invoke>``; a value is the text itself where ``string`` is ``true``, else JSON (the text where it is none);
phi4_mini (Phi-4-mini with vLLM's example template for it, vLLM's ``phi4_mini_json`` parser), after some text or
none, ``functools`` and a JSON array of ``{"name": ..., "arguments": {...}}``; internlm2 (InternLM2 and 2.5 with
vLLM's example template for them, vLLM's ``internlm2`` parser), after some text or none, each call a JSON object
after ``<|action_start|><|plugin|>``, up to ``<|action_end|>``; olmo3 (Olmo 3 with vLLM's example template for it,
vLLM's ``olmo3`` parser), after some text or none, a Python call on each line inside
``<function_calls></function_calls>``, its values literals, JSON's ``true``, ``false`` and ``null`` among them.
GLM's, Kimi's, MiniMax's, Granite's, Jamba's, Gemma's, LFM2's, Seed's and InternLM2's markers are special tokens,
kept in the text as Mistral's are, and DeepSeek's DSML with them, as vLLM keeps them."""
PYTHON_START, PYTHON_END = "<|python_start|>", "<|python_end|>"
XML_FUNCTION, XML_FUNCTION_END, XML_PARAMETER = "<function=", "</function>", "<parameter="
XML_PARAMETER_END = "</parameter>"
# a value ends at its closing tag or, where the model left it out, at the call's end (as vLLM's parsers read it)
_XML_PARAMETER = re.compile(r"<parameter=([^<>\n]*)>(.*?)(</parameter>|\Z)", re.DOTALL)
DEEPSEEK_CALLS, DEEPSEEK_CALL, DEEPSEEK_SEP = "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>"
GLM_KEY = "<arg_key>"
_GLM_ARGUMENT = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)(</arg_value>|\Z)", re.DOTALL)
KIMI_CALLS, KIMI_CALL, KIMI_ARGUMENTS = (
    "<|tool_calls_section_begin|>",
    "<|tool_call_begin|>",
    "<|tool_call_argument_begin|>",
)
MINIMAX_CALLS, MINIMAX_INVOKE_END = "<minimax:tool_call>", "</invoke>"
GRANITE_CALLS = "<|tool_call|>"
JAMBA_CALLS = "<tool_calls>"
INTERNLM_CALL = "<|action_start|><|plugin|>"
OLMO3_CALLS, OLMO3_CALLS_END = "<function_calls>", "</function_calls>"
PHI4_CALLS = "functools["
"""What begins Phi-4-mini's calls: a plain word and the array's bracket (the word alone begins Python's imports)."""
LFM2_CALLS = "<|tool_call_start|>"
SEED_CALL = "<seed:tool_call>"
_MINIMAX_NAME = r"""name\s*=\s*(?:"([^"]*)"|'([^']*)'|([^>\s"']+))\s*>"""
"""A name in MiniMax's tags: quoted either way, or not at all (then without quotes in it, so that a quoted name not
yet closed is not read as an unquoted one)."""
_MINIMAX_INVOKE = re.compile(r"<invoke\s+" + _MINIMAX_NAME)
_MINIMAX_PARAMETER = re.compile(r"<parameter\s+" + _MINIMAX_NAME + r"(.*?)(</parameter>|\Z)", re.DOTALL)


@dataclass(frozen=True)
class _Dsml:
    """One dialect of DeepSeek's DSML: what opens its calls, and how its tags begin (``<｜DSML｜invoke``)."""

    calls: str
    tag: str
    other_openings: tuple[str, ...] = ()
    """Other spellings of ``calls`` the model writes (V4's, as vLLM reads them)."""

    @cached_property
    def invoke(self) -> re.Pattern[str]:
        return re.compile(re.escape(f"<{self.tag}invoke") + r'\s+name="([^"]*)"\s*>')

    @cached_property
    def parameter(self) -> re.Pattern[str]:
        """A parameter: its key, its ``string`` attribute (may be left out), its value, and what ended the value:
        its closing tag, the next parameter's start (as vLLM reads one left open), or nothing at the call's end."""
        start = re.escape(f"<{self.tag}parameter")
        return re.compile(
            start + r'\s+name="([^"]*)"(?:\s+string="([^"]*)")?\s*>(.*?)'
            rf"({re.escape(self.parameter_end)}|(?={start}\s+name=)|\Z)",
            re.DOTALL,
        )

    @property
    def parameter_end(self) -> str:
        return f"</{self.tag}parameter>"

    @property
    def invoke_end(self) -> str:
        return f"</{self.tag}invoke>"

    @property
    def calls_end(self) -> str:
        return self.calls.replace("<", "</", 1)

    @property
    def value_ends(self) -> tuple[str, ...]:
        """What may end a value: its closing tag, its call's, the calls', or the next parameter's start."""
        return (self.parameter_end, self.invoke_end, self.calls_end, f'<{self.tag}parameter name="')


DSML_FORMATS: dict[str, _Dsml] = {
    "deepseek_v32": _Dsml("<｜DSML｜function_calls>", "｜DSML｜"),
    "deepseek_v4": _Dsml("<｜DSML｜tool_calls>", "｜DSML｜", ("<｜DSML｜toolcalls>", "<｜DSML｜tool>")),
    "deepseek_v41": _Dsml("<｜DSML｜ calls>", "｜DSML｜ "),
}
"""DeepSeek's DSML dialects by vLLM's tokenizer mode for the model, which is also the call format: these models have
no chat template, vLLM's tokenizer encodes their chats."""


_CALLS_OPENINGS: dict[ToolCallFormat, tuple[str, ...]] = {
    "mistral": (MISTRAL_CALLS,),
    "deepseek": (DEEPSEEK_CALLS,),
    "kimi_k2": (KIMI_CALLS,),
    "minimax": (MINIMAX_CALLS,),
    "jamba": (JAMBA_CALLS,),
    "phi4_mini": (PHI4_CALLS,),
    "internlm2": (INTERNLM_CALL,),
    "olmo3": (OLMO3_CALLS,),
    "gemma4": (GEMMA4_CALL,),
    "lfm2": (LFM2_CALLS,),
    "seed_oss": (SEED_CALL,),
} | {name: (dsml.calls, *dsml.other_openings) for name, dsml in DSML_FORMATS.items()}  # type: ignore[misc]
"""What opens an auto answer's calls (any of them), where it is not Hermes's ``<tool_call>``."""


def call_format(chat_template: str | None) -> ToolCallFormat:
    """The format a model's own chat template teaches it, from the words only that format's templates use: Qwen3-Coder's
    ``<function=`` and ``<parameter=`` (its template also writes ``<tool_call>``), GLM's ``<arg_key>`` (its template
    too), DeepSeek's ``<｜tool▁calls▁begin｜>``, Kimi K2's ``<|tool_calls_section_begin|>``, MiniMax's
    ``<minimax:tool_call>``, Seed-OSS's ``<seed:tool_call>``, Gemma 4's ``<|tool_call>call:``, LFM2's
    ``<|tool_call_start|>``, Granite's ``<|tool_call|>``, Jamba's ``<tool_calls>``, Phi-4-mini's ``functools[``,
    InternLM2's ``<|action_start|><|plugin|>``, Olmo 3's ``<function_calls>``, Mistral's ``[TOOL_CALLS]``, the
    pythonic templates' ``[func_name1(``, and Llama 3's ``{"name": function name, "parameters": ...}``. A template that
    renders ``<tool_call>`` tags otherwise, or no tools at all (ferry then writes Hermes instructions in, see
    ``conversation``), means Hermes."""
    template = chat_template or ""
    if "tools" not in template:
        return "hermes"
    if SEED_CALL in template:  # before Qwen3-Coder's: it writes the same XML inside its own tags
        return "seed_oss"
    if XML_FUNCTION in template and XML_PARAMETER in template:
        return "qwen3_xml"
    if GLM_KEY in template:
        return "glm"
    if DEEPSEEK_CALLS in template:
        return "deepseek"
    if KIMI_CALLS in template:
        return "kimi_k2"
    if MINIMAX_CALLS in template:
        return "minimax"
    if GEMMA4_CALL + "call:" in template:
        return "gemma4"
    if LFM2_CALLS in template:
        return "lfm2"
    if GRANITE_CALLS in template:
        return "granite"
    if JAMBA_CALLS in template:
        return "jamba"
    if PHI4_CALLS in template:
        return "phi4_mini"
    if INTERNLM_CALL in template:
        return "internlm2"
    if OLMO3_CALLS in template:
        return "olmo3"
    if CALL_OPEN in template:
        return "hermes"
    if MISTRAL_CALLS in template:
        return "mistral"
    if "[func_name1(" in template:  # the words of every pythonic template: [func_name1(params_name1=...), ...]
        return "pythonic"
    return "llama3_json" if '"parameters": ' in template or PYTHON_TAG in template else "hermes"


def calls_openings(call_format: ToolCallFormat) -> tuple[str, ...]:
    """What opens a model's calls inside its answer (any of these); none where its calls are the whole answer, read
    from its start (Llama 3's, pythonic, Granite's)."""
    return () if call_format in _ANSWER_STARTS else _CALLS_OPENINGS.get(call_format, (CALL_OPEN,))


def keeps_special_tokens(request: CompletionRequested, call_format: ToolCallFormat) -> bool:
    """Whether the engine must keep special tokens in the request's text: a Mistral, GLM, Kimi, MiniMax, Granite,
    Jamba, Gemma 4, LFM2, Seed-OSS, InternLM2 or DeepSeek DSML model's calls are marked by them (vLLM's parsers for
    them keep them too)."""
    return call_format in _MARKED_BY_SPECIAL_TOKENS and tool_mode(request) == "auto"


_MARKED_BY_SPECIAL_TOKENS = frozenset(
    (
        "mistral",
        "glm",
        "kimi_k2",
        "minimax",
        "granite",
        "jamba",
        "gemma4",
        "lfm2",
        "seed_oss",
        "internlm2",
        *DSML_FORMATS,
    )
)


def mistral_call_id(call_id: str) -> str:
    """The id Mistral's templates take for an earlier call and its result (9 letters or digits; they refuse any
    other), the same for the same id, as the call's turn and its tool turn must agree."""
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]


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


class TemplateArguments(dict[str, Any]):
    """A call's arguments as a chat template gets them: an object, as most templates read it (``|tojson``,
    ``|items``), that also reads as its JSON text where a template joins it to text (DeepSeek's writes
    ``'...' + arguments``, which the client sent as JSON text)."""

    def __str__(self) -> str:
        return json.dumps(self, ensure_ascii=False)

    def __add__(self, other: object) -> str:
        return str(self) + str(other)

    def __radd__(self, other: object) -> str:
        return str(other) + str(self)


def _template_arguments(arguments: str) -> Any:
    value = _arguments_value(arguments)
    return TemplateArguments(value) if isinstance(value, dict) else value


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
    messages: list[ChatMessage],
    tools: list[FunctionTool],
    native: bool,
    call_format: ToolCallFormat = "hermes",
    reasoning_in_chunks: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The turns to give the chat template, and the tools to pass it (None: none). ``native``: the template renders
    tools, tool calls and tool turns itself (a Mistral template gets call ids it takes, ``mistral_call_id``); else
    they are written into the turns in the Hermes format. ``reasoning_in_chunks``: the template writes an earlier
    turn's reasoning from a ``thinking`` chunk of its content, as Mistral's reasoning templates do (mistral_common's
    ThinkChunk), rather than from a field of the turn."""
    if native:
        template_id = mistral_call_id if call_format == "mistral" else str
        turns = []
        for m in messages:
            turn: dict[str, Any] = {"role": m.role, "content": m.content}
            if m.reasoning is not None and reasoning_in_chunks:
                text = [{"type": "text", "text": m.content}] if m.content else []
                turn["content"] = [{"type": "thinking", "thinking": m.reasoning}, *text]
            elif m.reasoning is not None:  # under both names vLLM gives it, and gpt-oss's template's
                turn["reasoning"] = turn["reasoning_content"] = turn["thinking"] = m.reasoning
            if m.tool_calls:
                turn["tool_calls"] = [
                    {
                        "id": template_id(c.id),
                        "type": "function",
                        "function": {"name": c.function.name, "arguments": _template_arguments(c.function.arguments)},
                    }
                    for c in m.tool_calls
                ]
            if m.tool_call_id is not None:
                turn["tool_call_id"] = template_id(m.tool_call_id)
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
        turn = {"role": m.role, "content": content}
        if m.reasoning is not None:
            turn["reasoning"] = turn["reasoning_content"] = m.reasoning
        turns.append(turn)
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


def call_id(request_id: str, index: int) -> str:
    """A call's id, the same each time the request is generated (a redelivered request then names its calls alike)."""
    return "call_" + hashlib.sha256(f"{request_id}:{index}".encode()).hexdigest()[:24]


def _string_end(text: str, start: int) -> int | None:
    """The index after the JSON string opening at ``text[start]``; None if it does not end within ``text``."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == '"':
            return i + 1
        else:
            i += 1
    return None


@dataclass
class _ValueScan:
    """Reads a JSON value beginning at ``start`` in a text that only grows, each character once: where the value ends
    (None while it may go on), and, for a call's arguments, its text written the one way every call's arguments are,
    as ``json.dumps`` spaces it (no whitespace outside strings, a space after each comma and colon; the model may
    spread its arguments over lines). Reading more of the text only ever adds to ``spaced``, so it can stream.
    ``spaced`` ends at a ``<`` outside strings, never JSON: a call whose arguments the model left open ends there, at
    its closing tag."""

    start: int
    position: int = -1  # the next character to read
    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    stopped: bool = False  # met a < outside strings
    end: int | None = None  # the index after the value, once it is whole
    spaced: str = ""

    def read(self, text: str) -> None:
        if self.end is not None:
            return
        scalar = text[self.start] not in '"{['
        i = max(self.position, self.start)
        out: list[str] = []
        while i < len(text):
            char = text[i]
            if self.in_string:
                out.append(char)
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
                    if self.depth == 0:
                        self.end = i + 1
                        break
            elif scalar and char in ",}]" + SPACE:
                self.end = i
                break
            elif char == "<" and not self.stopped:
                self.spaced += "".join(out)
                self.stopped = True
            elif char == '"':
                self.in_string = True
                out.append(char)
            elif char in "{[":
                self.depth += 1
                out.append(char)
            elif char in "}]":
                self.depth -= 1
                out.append(char)
                if self.depth == 0:
                    self.end = i + 1
                    break
            elif char in ",:":
                out.append(char + " ")
            elif char not in SPACE:
                out.append(char)
            i += 1
        self.position = i + 1 if self.end is not None else i
        if not self.stopped:
            self.spaced += "".join(out)


@dataclass
class _WrittenCall:
    """What a call object written so far holds: ``{"name": ..., "arguments": ...}``, possibly cut short."""

    text: str
    name: str | None = None  # once its string is whole
    arguments: _ValueScan | None = None  # None before the arguments begin
    end: int | None = None  # the index after the object's closing brace, once written
    broken: bool = False  # not a call object after all
    id: str | None = None  # the id the model wrote for it (Kimi K2's header); None: ferry names it (call_id)

    def arguments_text(self, final: bool) -> str:
        """The call's arguments as the client gets them, so far (``final``: the output has ended)."""
        scan = self.arguments
        if scan is None:
            return "{}" if self.end is not None else ""
        if self.text[scan.start] != '"':
            return scan.spaced
        # arguments written as a JSON string of JSON: the string's text, once whole
        raw = self.text[scan.start : scan.end]
        if scan.end is None:
            return raw if final else ""
        try:
            text = json.loads(raw)
        except ValueError:  # a bad escape
            return raw
        return text if isinstance(text, str) else raw


def _read_call(text: str, start: int, scans: dict[int, _ValueScan]) -> _WrittenCall:
    """The call object written from ``start``; ``scans`` keeps what was read of each value the last time."""
    call = _WrittenCall(text)
    i = skip_space(text, start)
    if i == len(text):
        return call
    if text[i] != "{":
        call.broken = True
        return call
    i += 1
    while True:
        i = skip_space(text, i)
        if i == len(text):
            return call
        if text[i] == "}":
            call.end = i + 1
            return call
        if text[i] == ",":
            i += 1
            continue
        key_end = _string_end(text, i) if text[i] == '"' else None
        if text[i] != '"' or key_end is None:
            call.broken = text[i] != '"'
            return call
        key = text[i + 1 : key_end - 1]
        i = skip_space(text, key_end)
        if i == len(text):
            return call
        if text[i] != ":":
            call.broken = True
            return call
        i = skip_space(text, i + 1)
        if i == len(text):
            return call
        scan = scans.setdefault(i, _ValueScan(i))
        scan.read(text)
        end = scan.end
        # Llama 3 names them parameters; the first one written counts: what streamed stays
        if key in ("arguments", "parameters") and call.arguments is None:
            call.arguments = scan
        if key == "name" and end is not None and call.name is None:
            try:
                name = json.loads(text[i:end])
            except ValueError:
                name = None
            if not isinstance(name, str):
                call.broken = True
                return call
            call.name = name
        if end is None:
            return call
        i = end


@dataclass
class ToolCallReader:
    """Splits a request's output, as it streams, into text for the client and tool calls, whose arguments stream too.

    In auto mode, text streams until a call's opening tag; what follows is read as calls. A call is announced once
    it names one of the request's tools, and its arguments then stream as the model writes them (spaced one way,
    ``_ValueScan``). In the forced modes the whole output is the call(s), which the grammar keeps well-formed. Text
    that never names an offered tool is given back as text at the end, so nothing is lost; as with OpenAI's models,
    the arguments of an announced call are what the model wrote, even if cut short by max_tokens."""

    request: CompletionRequested
    call_format: ToolCallFormat = "hermes"
    mode: ToolMode = field(init=False)
    held: str = ""
    calling: bool = False
    answered_in_text: bool = False  # llama3_json: the answer began as text, so it holds no call
    ended: bool = False
    sent: list[int] = field(default_factory=list)  # characters of each announced call's arguments given out
    _scans: dict[int, _ValueScan] = field(default_factory=dict)  # JSON values read so far, by where they begin

    def __post_init__(self) -> None:
        self.mode = tool_mode(self.request)

    def feed(self, text: str) -> str:
        """The part of ``text`` that may go to the client now as text; calls come out of ``pieces``."""
        if self.mode == "text":
            return text
        if self.mode != "auto" or self.calling:
            self.held += text
            return self._pythonic_text() if self.mode == "auto" and self.call_format in ("pythonic", "granite") else ""
        text, self.held = self.held + text, ""
        if self.call_format == "llama3_json":
            return self._feed_answer_start(text)
        if self.call_format in ("pythonic", "granite"):
            return self._feed_answer_start(text) + self._pythonic_text()
        openings = calls_openings(self.call_format)
        if found := [at for opening in openings if (at := text.find(opening)) >= 0]:
            start = min(found)
            self.calling, self.held = True, text[start:]
            return text[:start]
        keep = max(longest_tag_start(text, opening) for opening in openings)
        if keep:
            text, self.held = text[:-keep], text[-keep:]
        return text

    def _feed_answer_start(self, text: str) -> str:
        """Llama 3, pythonic and Granite models answer with calls or with text, so the answer's first characters
        decide: ``{`` or the python tag (Llama 3), ``[`` or ``<|python_start|>`` (pythonic), ``[`` or a call tag
        (Granite) begins calls; anything else is text to the end. Leading white space waits for the decision."""
        if self.answered_in_text:
            return text
        rest = text[skip_space(text, 0) :]
        starts = _ANSWER_STARTS[self.call_format]
        if rest.startswith(starts):
            self.calling, self.held = True, text
            return ""
        if not rest or any(tag.startswith(rest) for tag in starts[1:]):
            self.held = text
            return ""
        self.answered_in_text = True
        return text

    def _pythonic_text(self) -> str:
        """What held text turned out to be text (``[1] First, ...``), once the first element of a pythonic or
        Granite answer shows it is no call; it then streams as text to the end."""
        if not self.calling:
            return ""
        if self.call_format == "granite":
            written = self._written()
            if not written or not written[0].broken:
                return ""
        elif not _first_element_is_no_call(self.held):
            return ""
        released, self.held, self.calling, self.answered_in_text = self.held, "", False, True
        return released

    def pieces(self) -> list[ToolCallPiece]:
        """The calls' pieces written since the last time: a call's first piece opens it, even with no arguments."""
        out = []
        for index, (name, arguments, native_id) in enumerate(self._announced()):
            if index == len(self.sent):
                self.sent.append(0)
            elif len(arguments) == self.sent[index]:
                continue
            piece = arguments[self.sent[index] :]
            out.append(
                ToolCallPiece(
                    index=index,
                    id=native_id or call_id(self.request.request_id, index),
                    name=name,
                    arguments=piece,
                    arguments_offset=self.sent[index],
                )
            )
            self.sent[index] = len(arguments)
        return out

    @classmethod
    def read_whole(
        cls,
        request: CompletionRequested,
        text: str,
        finish_reason: FinishReason,
        call_format: ToolCallFormat = "hermes",
    ) -> tuple[str, list[ToolCall] | None, FinishReason]:
        """A whole output's text for the client, its calls and its finish reason: what ``feed`` and ``finish`` give
        when it streams, read at once."""
        reader = cls(request, call_format)
        released = reader.feed(text)
        rest, calls, reason = reader.finish(finish_reason)
        return released + rest, calls, reason

    def finish(self, finish_reason: FinishReason) -> tuple[str, list[ToolCall] | None, FinishReason]:
        """The text still to give the client, the calls (None: none), and the finish reason to report: tool_calls
        when the model ended by calling (OpenAI keeps stop for a named function, whose call was not the model's
        choice). ``pieces`` then gives what is left of the calls."""
        self.ended = True
        if self.mode == "text":
            return "", None, finish_reason
        announced = self._announced()
        if not announced:
            held, self.held, self.calling = self.held, "", False
            return held, None, finish_reason
        calls = [
            ToolCall(
                id=native_id or call_id(self.request.request_id, i),
                function=FunctionCall(name=name, arguments=arguments),
            )
            for i, (name, arguments, native_id) in enumerate(announced)
        ]
        ended_by_calling = finish_reason == "stop" and self.mode != "named"
        return "", calls, "tool_calls" if ended_by_calling else finish_reason

    def _announced(self) -> list[tuple[str, str, str | None]]:
        """(name, arguments so far, the id the model gave it or None) of each call announced in the held text: one
        naming an offered tool. Only Kimi's calls carry ids of their own."""
        if self.mode == "text" or not self.held:
            return []
        if self.mode == "named":
            assert self.request.tool_choice_function is not None
            start = skip_space(self.held, 0)
            if start == len(self.held):
                return [(self.request.tool_choice_function, "", None)]
            scan = self._scans.setdefault(start, _ValueScan(start))
            scan.read(self.held)
            return [(self.request.tool_choice_function, scan.spaced, None)]
        names = {t.name for t in self.request.tools}
        calls: list[tuple[str, str, str | None]] = []
        if (read_calls := _CALL_READERS.get(self.call_format)) is not None and self.mode == "auto":
            for name, arguments in read_calls(self.held, self.request):
                if name not in names:
                    break
                calls.append((name, arguments, None))
            return calls if self.request.parallel_tool_calls else calls[:1]
        for call in self._written():
            if call.name not in names:
                break
            calls.append((call.name, call.arguments_text(self.ended), call.id))
            if call.broken or call.end is None:
                break
        return calls if self.request.parallel_tool_calls else calls[:1]

    def _written(self) -> list[_WrittenCall]:
        """The call objects in the held text, up to the first that is broken or not yet closed."""
        text, calls = self.held, []
        if self.mode == "required":  # a JSON array of calls
            return self._array_of_calls(text, 0)
        if self.call_format == "llama3_json":  # auto: the answer is the calls, joined by semicolons
            i = skip_space(text, 0)
            return self._joined(text, i + len(PYTHON_TAG) if text.startswith(PYTHON_TAG, i) else i, ";")
        if self.call_format == "granite":  # auto: the answer is a JSON array of calls, perhaps after a call tag
            i = skip_space(text, 0)
            for tag in (GRANITE_CALLS, CALL_OPEN):
                i = skip_space(text, i + len(tag)) if text.startswith(tag, i) else i
            return self._array_of_calls(text, i)
        if self.call_format in ("jamba", "phi4_mini"):  # auto: a JSON array of calls after <tool_calls>, functools
            (opening,) = calls_openings(self.call_format)
            return self._array_of_calls(text, text.find(opening) + len(opening.removesuffix("[")))
        if self.call_format == "mistral":
            return self._mistral_calls(text)
        if self.call_format == "deepseek":
            return self._deepseek_calls(text)
        if self.call_format == "kimi_k2":
            return self._kimi_calls(text)
        # auto: each call after its opening (Hermes's <tool_call>, InternLM2's), anything between them ignored
        (opening,) = calls_openings(self.call_format)
        start = text.find(opening)
        while start >= 0:
            calls.append(call := _read_call(text, start + len(opening), self._scans))
            if call.broken or call.end is None:
                return calls
            start = text.find(opening, call.end)
        return calls

    def _array_of_calls(self, text: str, at: int) -> list[_WrittenCall]:
        """The call objects of the JSON array that begins at ``at``, after white space; none if no array begins."""
        i = skip_space(text, at)
        return self._joined(text, i + 1, ",") if text.startswith("[", i) else []

    def _mistral_calls(self, text: str) -> list[_WrittenCall]:
        """Mistral's calls, after ``[TOOL_CALLS]``: before tokenizer v11, one JSON array of call objects (or one
        object); from v11, each call after a ``[TOOL_CALLS]`` of its own, as ``name[ARGS]{arguments}`` (or
        ``name{arguments}``; a ``[CALL_ID]id`` after the name is left out)."""
        calls: list[_WrittenCall] = []
        start = text.find(MISTRAL_CALLS)
        while start >= 0:
            i = skip_space(text, start + len(MISTRAL_CALLS))
            if i == len(text):
                return calls
            if text[i] in "[{":
                return calls + self._joined(text, i + 1 if text[i] == "[" else i, ",")
            calls.append(call := _WrittenCall(text))
            name_ends = [p for p in (text.find(MISTRAL_ARGS, i), text.find("{", i)) if p >= 0]
            if not name_ends:
                return calls  # the name is still being written
            name_end = min(name_ends)
            call.name = text[i:name_end].split(MISTRAL_CALL_ID)[0].strip()
            arguments_at = name_end + (len(MISTRAL_ARGS) if text.startswith(MISTRAL_ARGS, name_end) else 0)
            if (end := self._arguments_after_name(call, text, arguments_at)) is None:
                return calls
            start = text.find(MISTRAL_CALLS, end)
        return calls

    def _deepseek_calls(self, text: str) -> list[_WrittenCall]:
        """DeepSeek's calls, each from ``<｜tool▁call▁begin｜>``: ``function<｜tool▁sep｜>NAME`` and a json code fence
        (V3, R1), or ``NAME<｜tool▁sep｜>`` and the arguments (V3.1)."""

        def header(call: _WrittenCall, name: str, arguments_at: int) -> int | None:
            if name == "function":  # V3: the name on the line after, the arguments in a json code fence
                if (line_end := text.find("\n", arguments_at)) < 0:
                    return None
                name, arguments_at = text[arguments_at:line_end].strip(), line_end + 1
                if text.startswith("```json", arguments_at):
                    arguments_at += len("```json")
            call.name = name
            return arguments_at

        return self._headed_calls(text, DEEPSEEK_CALL, DEEPSEEK_SEP, header)

    def _kimi_calls(self, text: str) -> list[_WrittenCall]:
        """Kimi K2's calls, each ``<|tool_call_begin|>HEADER<|tool_call_argument_begin|>{...}``: the header is the
        call's id, ``functions.NAME:INDEX``, and the name its part between ``functions.`` and ``:INDEX``."""

        def header(call: _WrittenCall, written: str, arguments_at: int) -> int:
            call.id, call.name = written, written.rsplit(":", 1)[0].removeprefix("functions.")
            return arguments_at

        return self._headed_calls(text, KIMI_CALL, KIMI_ARGUMENTS, header)

    def _headed_calls(
        self, text: str, opening: str, separator: str, header: Callable[[_WrittenCall, str, int], int | None]
    ) -> list[_WrittenCall]:
        """Calls written as ``opening`` HEADER ``separator`` and their JSON arguments, one after another.
        ``header`` reads a call's header (stripped) into it and says where its arguments begin (None: not yet
        known), given where the separator ends."""
        calls: list[_WrittenCall] = []
        start = text.find(opening)
        while start >= 0:
            calls.append(call := _WrittenCall(text))
            begin = start + len(opening)
            if (sep := text.find(separator, begin)) < 0:
                return calls  # the header is still being written
            arguments_at = header(call, text[begin:sep].strip(), sep + len(separator))
            if arguments_at is None or (end := self._arguments_after_name(call, text, arguments_at)) is None:
                return calls
            start = text.find(opening, end)
        return calls

    def _arguments_after_name(self, call: _WrittenCall, text: str, at: int) -> int | None:
        """Reads the JSON arguments that follow a call's name from ``at``; where they end, None until they do."""
        i = skip_space(text, at)
        if i == len(text) or text[i] == "`":  # not begun yet, or a code fence still being opened
            return None
        call.arguments = self._scans.setdefault(i, _ValueScan(i))
        call.arguments.read(text)
        call.end = call.arguments.end
        return call.end

    def _joined(self, text: str, start: int, separator: str) -> list[_WrittenCall]:
        """The call objects written one after another from ``start``, ``separator`` between them, up to the first
        that is broken, not yet closed, or not followed by the separator."""
        calls, i = [], start
        while True:
            calls.append(call := _read_call(text, i, self._scans))
            if call.broken or call.end is None:
                return calls
            i = skip_space(text, call.end)
            if i == len(text) or text[i] != separator:
                return calls
            i += 1


def pythonic_calls(text: str) -> list[tuple[str, str]]:
    """The whole calls at the start of a pythonic answer, ``[f(a=1, b="x"), g()]`` (perhaps after ``<|python_start|>``
    or ``<|tool_call_start|>``), as (name, arguments as JSON text), in order, up to the first that is not yet whole or
    is not a call of a function by name with keyword arguments whose values are literals. A call counts once the comma
    or bracket after it is written, so a call streams whole."""
    calls: list[tuple[str, str]] = []
    for element in _pythonic_elements(text):
        call = _pythonic_call(element)
        if call is None:
            break
        calls.append(call)
    return calls


def _first_element_is_no_call(text: str) -> bool:
    """Whether an answer that began like a pythonic list shows it is not one: its first element is whole and is no
    call, or the python tag is followed by something else than a list."""
    i = _list_start(text)
    if i < len(text) and text[i] != "[":
        return True
    elements = _pythonic_elements(text, most=1)
    return bool(elements) and _pythonic_call(elements[0]) is None


def _list_start(text: str) -> int:
    """Where a pythonic answer's list begins: after leading space and ``<|python_start|>`` (or LFM2's
    ``<|tool_call_start|>``), if any."""
    i = skip_space(text, 0)
    for tag in (PYTHON_START, LFM2_CALLS):
        if text.startswith(tag, i):
            return skip_space(text, i + len(tag))
    return i


def _pythonic_elements(text: str, most: int | None = None) -> list[str]:
    i = _list_start(text)
    return _list_elements(text, i + 1, most) if text.startswith("[", i) else []


def _list_elements(text: str, start: int, most: int | None = None) -> list[str]:
    """The texts of the elements of a Python list whose items begin at ``start``, each once the comma or closing
    bracket after it is written (strings and nesting are skipped over); ``most``: stop after that many."""
    elements, depth, quote, i, begin = [], 0, "", start, start
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\":
                i += 1
            elif text.startswith(quote, i):
                i += len(quote) - 1
                quote = ""
        elif char in "\"'":
            quote = text[i : i + 3] if text[i : i + 3] in ('"""', "'''") else char
            i += len(quote) - 1
        elif char in "([{":
            depth += 1
        elif char in ")}" or (char == "]" and depth > 0):
            depth -= 1
        elif char in ",]" and depth == 0:
            if element := text[begin:i].strip():
                elements.append(element)
            if char == "]" or len(elements) == most:
                break
            begin = i + 1
        i += 1
    return elements


def olmo3_calls(text: str) -> list[tuple[str, str]]:
    """The calls in Olmo 3's ``<function_calls>`` block, one Python call on each line, as (name, arguments as JSON
    text), in order, up to the first that is not such a call; a call counts once its line ends (or the block does),
    so a call streams whole. Its values may be written as JSON's ``true``, ``false`` and ``null``, as vLLM's ``olmo3``
    parser reads them."""
    start = text.find(OLMO3_CALLS)
    if start < 0:
        return []
    body = text[start + len(OLMO3_CALLS) :]
    body, closed, _ = body.partition(OLMO3_CALLS_END)
    lines = body.split("\n")
    calls: list[tuple[str, str]] = []
    for line in lines if closed else lines[:-1]:  # the last line is whole once the block is closed
        if not line.strip():
            continue
        call = _pythonic_call(line.strip(), json_names=True)
        if call is None:
            break
        calls.append(call)
    return calls


class _JsonNames(ast.NodeTransformer):
    """Reads JSON's ``true``, ``false`` and ``null``, written as names, as the constants they are."""

    VALUES: dict[str, Any] = {"true": True, "false": False, "null": None}

    def visit_Name(self, node: ast.Name) -> ast.AST:
        return ast.Constant(self.VALUES[node.id]) if node.id in self.VALUES else node


def _pythonic_call(element: str, json_names: bool = False) -> tuple[str, str] | None:
    """(name, arguments as JSON text) of ``name(key=literal, ...)``; None when ``element`` is not such a call.
    ``json_names``: JSON's ``true``, ``false`` and ``null`` are literals too (Olmo 3's)."""
    try:
        node = ast.parse(element, mode="eval").body
    except SyntaxError:
        return None
    if json_names and isinstance(node, ast.Call):
        node.keywords = [ast.keyword(k.arg, _JsonNames().visit(k.value)) for k in node.keywords]
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
        return None
    arguments: dict[str, Any] = {}
    for keyword in node.keywords:
        if keyword.arg is None:  # **kwargs
            return None
        try:
            arguments[keyword.arg] = ast.literal_eval(keyword.value)
        except (ValueError, SyntaxError):  # a variable or an expression, not a value
            return None
    try:
        return node.func.id, json.dumps(arguments, ensure_ascii=False)
    except (TypeError, ValueError):  # a set, bytes or a complex number: not JSON
        return None


def xml_calls(text: str, request: CompletionRequested) -> list[tuple[str, str]]:
    """The calls in Qwen3-Coder's XML, ``<function=NAME><parameter=KEY>value</parameter></function>``, as (name,
    arguments as JSON text), in order, up to the first not yet closed, whose arguments are those written so far (see
    ``_typed_arguments``). Each value is read as its parameter's type in the named tool's schema, as vLLM's parser
    does: a number, a boolean, null, or JSON for an object or an array where the schema says so and the text is one;
    the text as written otherwise."""
    calls, start = [], text.find(XML_FUNCTION)
    while start >= 0:
        name_end = text.find(">", start)
        if name_end < 0:
            break
        name = text[start + len(XML_FUNCTION) : name_end].strip()
        end = text.find(XML_FUNCTION_END, start)
        body = text[name_end : end if end >= 0 else len(text)]
        ends = (XML_PARAMETER_END, XML_FUNCTION_END)
        written, writing = _written_parameters(_XML_PARAMETER.finditer(body), end >= 0, ends)
        calls.append((name, _typed_arguments(request, name, written, end >= 0, writing)))
        if end < 0:
            break
        start = text.find(XML_FUNCTION, end)
    return calls


def _written_parameters(
    matches: Iterable[re.Match[str]], closed: bool, ends: tuple[str, ...]
) -> tuple[list[tuple[str, str]], tuple[str, str] | None]:
    """A call's parameters, from the ``matches`` of its format's parameter pattern in its body, as (key, value as
    written) in order, and the one still being written, if the call is not ``closed``: the last, when nothing ended
    its value. Of a match, the first set group of the first three is the key, the next to last group the value, the
    last what ended it: its closing tag, or nothing at the body's end. The value still being written leaves out a
    part of any of the tags that may end it (``ends``), as they are not known yet."""
    written = [(_first_group(m), m.group(m.re.groups - 1), m.group(m.re.groups)) for m in matches]
    if closed or not written or written[-1][2]:
        return [(key, value) for key, value, _ in written], None
    key, value, _ = written[-1]
    held = max(longest_tag_start(value, tag) for tag in ends)
    return [(k, v) for k, v, _ in written[:-1]], (key, value[: len(value) - held])


def _typed_arguments(
    request: CompletionRequested,
    name: str,
    written: list[tuple[str, str]],
    closed: bool = True,
    writing: tuple[str, str] | None = None,
) -> str:
    """A call's (key, value as text) pairs as its arguments' JSON text, each value read as its parameter's type in
    the schema of the offered tool ``name`` (``_typed``), without the newline the templates write on each side; a key
    written twice keeps its first value. A call not yet ``closed`` has the text so far, which the closed call's text
    continues: the pairs written whole, then ``writing``, the (key, value so far) of a parameter still being written,
    if its value is text (a string in the schema, or a parameter the schema does not describe); a value of another
    type comes whole, once written. So a long string argument streams as the model writes it."""
    tool = next((t for t in request.tools if t.name == name), None)
    properties = _parameters(tool).get("properties", {}) if tool is not None else {}
    # the newline the template writes before the closing tag is not known yet, so a value being written leaves it out
    return _arguments_text(
        written,
        closed,
        writing,
        read=lambda key, value: _typed(_unwrapped(value), properties.get(key)),
        is_text=lambda key: _is_text(properties.get(key)),
        unwrap=_unwrapped,
    )


def _arguments_text(
    written: list[tuple[str, str]],
    closed: bool,
    writing: tuple[str, str] | None,
    read: Callable[[str, str], Any],
    is_text: Callable[[str], bool | None],
    unwrap: Callable[[str], str] = lambda value: value,
) -> str:
    """The JSON text of a call's arguments, from its (key, value as written) pairs, each value read by ``read``
    (key, value); a key written twice keeps its first value. A call not yet ``closed`` gets ``writing``'s value so
    far (``unwrap``-ed) if ``is_text`` says its key's value is the text itself (see ``_typed_arguments``)."""
    arguments: dict[str, Any] = {}
    for key, value in written:
        arguments.setdefault(key.strip(), read(key.strip(), value))
    if closed:
        return json.dumps(arguments, ensure_ascii=False)
    if writing is None or (key := writing[0].strip()) in arguments or not is_text(key):
        return open_arguments(arguments, None)
    return open_arguments(arguments, (key, unwrap(writing[1])))


def _is_text(schema: Any) -> bool:
    """Whether a parameter's value is read as the text written, whatever it is (``_typed``): a string in its schema,
    or a parameter the schema does not describe."""
    return _schema_types(schema) <= {"string"} if isinstance(schema, dict) else True


def glm_calls(text: str, request: CompletionRequested) -> list[tuple[str, str]]:
    """The calls in GLM's format, ``<tool_call>NAME<arg_key>KEY</arg_key><arg_value>value</arg_value>
    </tool_call>`` (newlines between the parts or not), as (name, arguments as JSON text), in order, up to the first
    not yet closed, whose arguments are those written so far once its name is (see ``_typed_arguments``). Each value
    is read as its parameter's type in the named tool's schema, as ``xml_calls`` reads them (GLM's templates write a
    string as it is and any other value as JSON)."""
    calls, start = [], text.find(CALL_OPEN)
    while start >= 0:
        end = text.find(CALL_CLOSE, start)
        body = text[start + len(CALL_OPEN) : end if end >= 0 else len(text)]
        # the name ends at the first key, or at a line's end (GLM-4.5 writes one after it)
        name_at = len(body) - len(body.lstrip())
        name_ends = [at for at in (body.find(GLM_KEY), body.find("\n", name_at)) if at >= 0]
        if end < 0 and not name_ends:
            break  # the name may not be whole yet
        name = body[: min(name_ends, default=len(body))].strip()
        written, writing = _written_parameters(_GLM_ARGUMENT.finditer(body), end >= 0, ("</arg_value>", CALL_CLOSE))
        calls.append((name, _typed_arguments(request, name, written, end >= 0, writing)))
        if end < 0:
            break
        start = text.find(CALL_OPEN, end)
    return calls


def minimax_calls(text: str, request: CompletionRequested) -> list[tuple[str, str]]:
    """The calls in MiniMax M2's format, ``<invoke name="NAME"><parameter name="KEY">value</parameter></invoke>``
    (names quoted either way or not at all), as (name, arguments as JSON text), in order, up to the first not yet
    closed, whose arguments are those written so far (see ``_typed_arguments``); each value read as its parameter's
    type, as ``xml_calls`` reads them."""
    calls, position = [], 0
    while (invoke := _MINIMAX_INVOKE.search(text, position)) is not None:
        end = text.find(MINIMAX_INVOKE_END, invoke.end())
        body = text[invoke.end() : end if end >= 0 else len(text)]
        name = _first_group(invoke)
        ends = (XML_PARAMETER_END, MINIMAX_INVOKE_END)
        written, writing = _written_parameters(_MINIMAX_PARAMETER.finditer(body), end >= 0, ends)
        calls.append((name, _typed_arguments(request, name, written, end >= 0, writing)))
        if end < 0:
            break
        position = end + len(MINIMAX_INVOKE_END)
    return calls


def dsml_calls(text: str, dsml: _Dsml) -> list[tuple[str, str]]:
    """The calls in DeepSeek's DSML (dialect ``dsml``), ``<｜DSML｜invoke name="NAME"><｜DSML｜parameter name="KEY"
    string="true|false">value</｜DSML｜parameter></｜DSML｜invoke>``, as (name, arguments as JSON text), in order, up
    to the first not yet closed, whose arguments are those written so far. As vLLM's parsers read them: a value is
    the text as written where ``string`` is ``true``, else JSON, or the text where it is none; a call ends at
    ``</｜DSML｜invoke>`` or at the end of the calls. A text value streams as it is written (see ``_typed_arguments``);
    a key written twice keeps its first value, and its ``string`` attribute with it."""
    calls, position, invoke_pattern, parameter = [], 0, dsml.invoke, dsml.parameter
    while (invoke := invoke_pattern.search(text, position)) is not None:
        ends = (text.find(dsml.invoke_end, invoke.end()), text.find(dsml.calls_end, invoke.end()))
        end = min((at for at in ends if at >= 0), default=-1)
        body = text[invoke.end() : end if end >= 0 else len(text)]
        matches = list(parameter.finditer(body))
        written, writing = _written_parameters(matches, end >= 0, dsml.value_ends)
        strings: dict[str, bool] = {}
        for match in matches:
            strings.setdefault(match.group(1).strip(), match.group(2) == "true")
        arguments = _arguments_text(written, end >= 0, writing, _dsml_value(strings), strings.get)
        calls.append((invoke.group(1).strip(), arguments))
        if end < 0:
            break
        position = end
    return calls


def _dsml_value(strings: dict[str, bool]) -> Callable[[str, str], Any]:
    """How a DSML call's values are read, given each key's ``string`` attribute (``strings``): the text itself, or
    JSON (NaN and the infinities, which JSON has not, left as text)."""

    def read(key: str, value: str) -> Any:
        if strings.get(key):
            return value
        try:
            return json.loads(value, parse_constant=_not_json)
        except ValueError:
            return value

    return read


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _first_group(match: re.Match[str]) -> str:
    """A name or key a match read: its first group of the first three that is set (MiniMax's names, in double quotes,
    single quotes or none; the other formats' keys are their patterns' only such group)."""
    return next(group for group in match.groups()[:3] if group is not None).strip()


def _unwrapped(value: str) -> str:
    """A parameter's value without the one newline the template writes on each side of it."""
    return value.removeprefix("\n").removesuffix("\n")


def _typed(value: str, schema: Any) -> Any:
    """``value`` as the first of its schema's types it can be read as (null, integer, number, boolean, object, array),
    else the text itself; a parameter the schema does not describe stays text."""
    types = _schema_types(schema) if isinstance(schema, dict) else set()
    if "null" in types and value.strip().lower() == "null":
        return None
    for kind in ("integer", "number"):
        if kind in types:
            try:
                number = int(value) if kind == "integer" else float(value)
            except ValueError:
                continue
            if isinstance(number, float) and not math.isfinite(number):
                continue
            return int(number) if isinstance(number, float) and number.is_integer() else number
    if "boolean" in types and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if types & {"object", "array"}:
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        if isinstance(parsed, dict | list):
            return parsed
    return value


def _schema_types(schema: dict[str, Any]) -> set[str]:
    kinds = schema.get("type")
    types = {kinds} if isinstance(kinds, str) else set(kinds or [])
    for choice in ("anyOf", "oneOf"):
        for option in schema.get(choice) or []:
            if isinstance(option, dict):
                types |= _schema_types(option)
    return types


_ANSWER_STARTS: dict[ToolCallFormat, tuple[str, ...]] = {
    "llama3_json": ("{", PYTHON_TAG),
    "pythonic": ("[", PYTHON_START),
    "granite": ("[", GRANITE_CALLS, CALL_OPEN),
}
"""What begins calls in the answer of a model that answers with calls or with text (the first, one character; the
others, tags whose parts are held until known)."""

_CALL_READERS: dict[ToolCallFormat, Callable[[str, CompletionRequested], list[tuple[str, str]]]] = {
    "pythonic": lambda text, _: pythonic_calls(text),
    "qwen3_xml": xml_calls,
    "glm": glm_calls,
    "minimax": minimax_calls,
    "gemma4": lambda text, _: gemma4_calls(text),
    "lfm2": lambda text, _: pythonic_calls(text),
    "seed_oss": xml_calls,
    "olmo3": lambda text, _: olmo3_calls(text),
} | {name: lambda text, _, dsml=dsml: dsml_calls(text, dsml) for name, dsml in DSML_FORMATS.items()}
"""The formats whose calls have readers of their own (text, request -> (name, arguments so far) of each call): the
pythonic ones, Gemma's and LFM2's give each call once written whole; the XML-like ones each call once named, its
text values streaming (``_typed_arguments``)."""
