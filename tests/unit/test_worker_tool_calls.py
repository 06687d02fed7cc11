"""How a chat with tools is written for the model, and how its calls are read back, streamed or whole."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest

from services.worker.tool_calls import (
    DSML_FORMATS,
    ToolCallFormat,
    ToolCallReader,
    call_id,
    conversation,
    forced_schema,
    tool_mode,
)
from shared.contracts import (
    ChatMessage,
    CompletionRequested,
    FinishReason,
    FunctionCall,
    FunctionTool,
    ToolCall,
    ToolCallPiece,
)

WEATHER = FunctionTool(
    name="get_weather",
    description="The weather in a city now.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = FunctionTool(name="get_time", parameters=None)


def request(**fields: object) -> CompletionRequested:
    base: dict[str, object] = {
        "request_id": "req-1",
        "model": "m",
        "reply_topic": "replies",
        "messages": [ChatMessage(role="user", content="Weather in Paris?")],
        "tools": [WEATHER, TIME],
    }
    return CompletionRequested.model_validate(base | fields)


def streamed(reader: ToolCallReader, pieces: list[str]) -> str:
    return "".join(reader.feed(p) for p in pieces)


def test_the_mode_follows_tool_choice() -> None:
    assert tool_mode(request(tools=[])) == "text"
    assert tool_mode(request(tool_choice="none")) == "text"
    assert tool_mode(request()) == "auto"
    assert tool_mode(request(tool_choice="required")) == "required"
    assert tool_mode(request(tool_choice="required", tool_choice_function="get_time")) == "named"


def test_a_named_choice_must_be_one_of_the_tools() -> None:
    with pytest.raises(ValueError, match="tool_choice_function"):
        request(tool_choice="required", tool_choice_function="get_stock_price")


TOOL_CONVERSATION = [
    ChatMessage(role="user", content="Weather in Paris?"),
    ChatMessage(
        role="assistant",
        content="Checking.",
        tool_calls=[
            ToolCall(id="call_1", function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}')),
            ToolCall(id="call_2", function=FunctionCall(name="get_time", arguments="{}")),
        ],
    ),
    ChatMessage(role="tool", content="18 C", tool_call_id="call_1"),
    ChatMessage(role="tool", content="14:05", tool_call_id="call_2"),
    ChatMessage(role="assistant", content="18 C at 14:05."),
    ChatMessage(role="user", content="And Rome?"),
]


def test_tools_are_written_into_the_system_turn_when_the_template_has_no_place_for_them() -> None:
    messages = [ChatMessage(role="system", content="Be brief."), *TOOL_CONVERSATION[:4]]
    turns, template_tools = conversation(messages, [WEATHER], native=False)
    assert template_tools is None
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user"]
    system = turns[0]["content"]
    assert system.startswith("Be brief.\n\n# Tools")
    listed = system.split("<tools>\n")[1].split("\n</tools>")[0]
    assert json.loads(listed)["function"]["name"] == "get_weather"
    assert turns[2]["content"] == (
        'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    )
    # both results of the turn's calls go back in one turn, in order
    assert turns[3]["content"] == "<tool_response>\n18 C\n</tool_response>\n<tool_response>\n14:05\n</tool_response>"


def test_without_a_system_turn_the_instructions_make_one() -> None:
    turns, _ = conversation([ChatMessage(role="user", content="Hi")], [TIME], native=False)
    assert turns[0]["role"] == "system" and turns[0]["content"].startswith("# Tools")
    assert '"parameters": {"type": "object"}' in turns[0]["content"]  # a function without a schema takes any object


def test_a_template_that_renders_tools_gets_them_and_the_calls_as_objects() -> None:
    messages = [
        ChatMessage(role="user", content="Weather?"),
        ChatMessage(
            role="assistant",
            tool_calls=[ToolCall(id="call_1", function=FunctionCall(name="get_weather", arguments='{"city": "Oslo"}'))],
        ),
        ChatMessage(role="tool", content="2 C", tool_call_id="call_1"),
    ]
    turns, template_tools = conversation(messages, [WEATHER], native=True)
    assert template_tools == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": WEATHER.description, "parameters": WEATHER.parameters},
        }
    ]
    assert turns[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert turns[2] == {"role": "tool", "content": "2 C", "tool_call_id": "call_1"}


def test_forced_schemas_accept_only_calls_of_the_tools() -> None:
    required = forced_schema(request(tool_choice="required"))
    assert required is not None
    jsonschema.validate(
        [{"name": "get_weather", "arguments": {"city": "Rome"}}, {"name": "get_time", "arguments": {}}], required
    )
    for wrong in ([], [{"name": "get_stock", "arguments": {}}], [{"name": "get_weather", "arguments": {}}]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, required)
    single = forced_schema(request(tool_choice="required", parallel_tool_calls=False))
    assert single is not None and single["maxItems"] == 1
    assert forced_schema(request(tool_choice="required", tool_choice_function="get_weather")) == WEATHER.parameters
    assert forced_schema(request()) is None


def test_auto_streams_text_and_holds_the_call() -> None:
    reader = ToolCallReader(request())
    released = streamed(
        reader,
        [
            "Let me check.",
            "\n<tool",
            '_call>\n{"name": "get_weather", ',
            '"arguments": {"city": "Paris"}}\n</tool_call>',
        ],
    )
    assert released == "Let me check.\n"  # "<tool" was held until it was known to open a call
    rest, calls, reason = reader.finish("stop")
    assert rest == "" and reason == "tool_calls"
    assert calls == [
        ToolCall(id=call_id("req-1", 0), function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}'))
    ]


def test_auto_gives_back_text_that_only_looked_like_a_call() -> None:
    reader = ToolCallReader(request())
    assert streamed(reader, ["a <to", "ol> b <tool_"]) == "a <tool> b "
    assert reader.finish("stop") == ("<tool_", None, "stop")
    # a call of a function the request did not offer, or broken JSON, is text: nothing is lost
    for written in ('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>', "<tool_call>{not json</tool_call>"):
        assert ToolCallReader.read_whole(request(), "ok " + written, "stop") == ("ok " + written, None, "stop")


def test_several_calls_one_unless_parallel_calls_are_off() -> None:
    text = (
        '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\n'
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'
    )
    _, calls, _ = ToolCallReader.read_whole(request(), text, "stop")
    assert calls is not None and [c.function.name for c in calls] == ["get_time", "get_weather"]
    assert len({c.id for c in calls}) == 2
    _, calls, _ = ToolCallReader.read_whole(request(parallel_tool_calls=False), text, "stop")
    assert calls is not None and [c.function.name for c in calls] == ["get_time"]


def test_forced_calls_stream_no_text() -> None:
    reader = ToolCallReader(request(tool_choice="required"))
    assert streamed(reader, ['[{"name": "get_weather", ', '"arguments": {"city": "Paris"}}]']) == ""
    rest, calls, reason = reader.finish("stop")
    assert rest == "" and reason == "tool_calls"
    assert calls is not None and json.loads(calls[0].function.arguments) == {"city": "Paris"}


def test_a_named_call_keeps_stop_and_its_arguments_even_when_cut_short() -> None:
    named = request(tool_choice="required", tool_choice_function="get_weather")
    assert ToolCallReader.read_whole(named, ' {"city": "Paris"}', "stop")[1:] == (
        [ToolCall(id=call_id("req-1", 0), function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}'))],
        "stop",
    )
    text, calls, reason = ToolCallReader.read_whole(named, '{"city": "Par', "length")
    assert text == "" and reason == "length" and calls is not None and calls[0].function.arguments == '{"city": "Par'


def test_a_required_answer_cut_short_comes_back_as_text() -> None:
    assert ToolCallReader.read_whole(request(tool_choice="required"), '[{"name": "get_we', "length") == (
        '[{"name": "get_we',
        None,
        "length",
    )


def test_without_tools_text_passes_untouched() -> None:
    reader = ToolCallReader(request(tool_choice="none"))
    assert streamed(reader, ["<tool_call>", "x"]) == "<tool_call>x"
    assert reader.finish("length") == ("", None, "length")


def test_call_ids_are_stable_across_redeliveries() -> None:
    assert call_id("req-1", 0) == call_id("req-1", 0) != call_id("req-1", 1) != call_id("req-2", 1)


@pytest.mark.parametrize("system", [[], [ChatMessage(role="system", content="Be brief.")]])
def test_the_tiny_models_template_writes_tools_as_ferry_writes_them_for_a_template_without(
    system: list[ChatMessage],
) -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    from services.worker.model_store import TINY_CHAT_TEMPLATE

    def rendered(native: bool) -> str:
        turns, tools = conversation([*system, *TOOL_CONVERSATION], [WEATHER, TIME], native=native)
        (prompt,), _ = render_jinja_template(
            [turns], tools=tools, chat_template=TINY_CHAT_TEMPLATE, add_generation_prompt=True
        )
        return str(prompt)

    native = rendered(native=True)
    assert native == rendered(native=False)
    assert "<tools>\n" in native and '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>' in native
    assert (
        "<|im_start|>user\n<tool_response>\n18 C\n</tool_response>\n<tool_response>\n14:05\n</tool_response>" in native
    )


def test_without_tools_the_tiny_models_template_is_plain_chatml() -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    from services.worker.model_store import TINY_CHAT_TEMPLATE

    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    (prompt,), _ = render_jinja_template([turns], chat_template=TINY_CHAT_TEMPLATE, add_generation_prompt=True)
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_the_tiny_models_template_lists_documents_in_a_system_turn_first() -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    from services.worker.model_store import TINY_CHAT_TEMPLATE

    turns = [{"role": "user", "content": "Capital?"}]
    documents = [{"title": "France", "text": "Paris is the capital."}, {"text": "Untitled."}]
    (prompt,), _ = render_jinja_template(
        [turns], chat_template=TINY_CHAT_TEMPLATE, add_generation_prompt=True, documents=documents
    )
    assert prompt == (
        "<|im_start|>system\nDocuments:\n[1] France: Paris is the capital.\n[2] : Untitled.<|im_end|>\n"
        "<|im_start|>user\nCapital?<|im_end|>\n<|im_start|>assistant\n"
    )


def streamed_calls(reader: ToolCallReader, chunks: list[str], finish_reason: FinishReason = "stop") -> list[dict]:
    """Feeds ``chunks`` and finishes, joining the pieces of each call as a client joins OpenAI's deltas."""
    calls: list[dict] = []
    for chunk in chunks:
        reader.feed(chunk)
        joined(calls, reader.pieces())
    reader.finish(finish_reason)
    joined(calls, reader.pieces())
    return calls


def joined(calls: list[dict], pieces: list[ToolCallPiece]) -> None:
    for piece in pieces:
        if piece.index == len(calls):
            calls.append({"id": piece.id, "name": piece.name, "arguments": ""})
        assert piece.arguments_offset == len(calls[piece.index]["arguments"])
        calls[piece.index]["arguments"] += piece.arguments


def as_dicts(calls: list[ToolCall] | None) -> list[dict]:
    return [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in calls or []]


def named_arguments(calls: list[ToolCall] | None) -> list[tuple[str, object]]:
    """Each call's name and its arguments as read from their JSON: what a template's earlier calls must read back as."""
    return [(c.function.name, json.loads(c.function.arguments)) for c in calls or []]


OUTPUTS = [
    (request(), 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris",\n "days": [1, 2]}}\n'
     "</tool_call>"),
    (request(), '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\n<tool_call>{"name": "get_weather", '
     '"arguments": {"city": "Rio \\"de\\" Janeiro, {RJ}: \\\\o/"}}</tool_call>'),
    (request(), '<tool_call>{"arguments": {"city": "Oslo"}, "name": "get_weather"}</tool_call>'),
    (request(), '<tool_call>{"name": "get_time", "arguments": {"a": 1}, "arguments": {}}</tool_call>'),
    (request(), '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Lima\\"}"}</tool_call>'),
    (request(tool_choice="required"), '[\n  {"name": "get_weather", "arguments": {"city": "Paris"}},\n'
     '  {"name": "get_time", "arguments": {}}\n]'),
    (request(tool_choice="required", tool_choice_function="get_weather"), '\n{\n  "city" :  "Paris"\n}\n'),
]  # fmt: skip


@pytest.mark.parametrize(("req", "output"), OUTPUTS)
def test_streamed_pieces_join_to_the_calls_read_whole_however_the_output_is_split(
    req: CompletionRequested, output: str
) -> None:
    text, whole, _ = ToolCallReader.read_whole(req, output, "stop")
    assert whole and text in ("", "Sure.\n")
    for arguments in (c.function.arguments for c in whole):
        json.loads(arguments)  # each is JSON text
    for size in (1, 2, 3, 7, len(output)):
        chunks = [output[i : i + size] for i in range(0, len(output), size)]
        assert streamed_calls(ToolCallReader(req), chunks) == as_dicts(whole), size


def test_arguments_stream_as_they_are_written_spaced_one_way() -> None:
    reader = ToolCallReader(request())
    assert reader.feed('I will look.<tool_call>{"name": "get_w') == "I will look."
    assert reader.pieces() == []  # no call until it names an offered tool
    reader.feed('eather", "arguments": {"city":\n  "Par')
    (opening,) = reader.pieces()
    assert (opening.index, opening.name, opening.id) == (0, "get_weather", call_id("req-1", 0))
    assert (opening.arguments, opening.arguments_offset) == ('{"city": "Par', 0)
    reader.feed('is"}}</tool_call>')
    (rest,) = reader.pieces()
    assert (rest.arguments, rest.arguments_offset) == ('is"}', len('{"city": "Par'))
    assert reader.finish("stop")[1:] == (
        [ToolCall(id=call_id("req-1", 0), function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}'))],
        "tool_calls",
    )
    assert reader.pieces() == []


def test_arguments_the_model_left_open_end_at_the_closing_tag() -> None:
    output = '<tool_call>{"name": "get_weather", "arguments": {"city": "<b>Paris</b>"</tool_call> Done.'
    _, calls, _ = ToolCallReader.read_whole(request(), output, "stop")
    assert calls is not None and calls[0].function.arguments == '{"city": "<b>Paris</b>"'
    assert streamed_calls(ToolCallReader(request()), list(output)) == as_dicts(calls)


def test_a_named_call_opens_at_once_and_a_required_call_cut_short_keeps_what_was_written() -> None:
    named = ToolCallReader(request(tool_choice="required", tool_choice_function="get_time"))
    named.feed("{")
    assert [(p.name, p.arguments) for p in named.pieces()] == [("get_time", "{")]
    cut = ToolCallReader.read_whole(
        request(tool_choice="required"), '[{"name": "get_weather", "arguments": {"ci', "length"
    )
    assert cut == ("", [ToolCall(id=call_id("req-1", 0), function=FunctionCall(name="get_weather", arguments='{"ci'))],
                   "length")  # fmt: skip


def call_like(rng: random.Random, required: bool) -> str:
    """An output of calls as a model might write them: well-formed or not, cut short or not."""
    calls = []
    for _ in range(rng.randint(1, 2)):
        name = rng.choice(["get_weather", "get_time", "rm_rf"])
        arguments = rng.choice(
            ['{"city": "Paris"}', '{"city": "a\\"}{"}', "{}", '"{\\"city\\": 1}"', '{"n": [1, 2.5e3, true, null]}']
        )
        written = rng.choice(
            [f'{{"name": "{name}", "arguments": {arguments}}}', f'{{"arguments": {arguments}, "name": "{name}"}}']
        )
        calls.append(written.replace(", ", rng.choice([", ", ",\n  ", ","])))
    if required:
        output = "[" + ", ".join(calls) + "]"
    else:
        output = "Let me see. " + " ".join(f"<tool_call>\n{c}\n</tool_call>" for c in calls)
    return spoiled(rng, output, 0.3, '{}[]",: x\\')


def spoiled(rng: random.Random, output: str, wrong: float, characters: str) -> str:
    """``output`` perhaps written wrong somewhere (one of ``characters`` in place of another, with odds ``wrong``),
    and perhaps cut short (even odds)."""
    if rng.random() < wrong:
        at = rng.randrange(len(output))
        output = output[:at] + rng.choice(characters) + output[at + 1 :]
    if rng.random() < 0.5:
        output = output[: rng.randrange(len(output))]
    return output


@pytest.mark.parametrize("mode", [{}, {"tool_choice": "required"}])
def test_any_output_split_anyhow_streams_pieces_that_join_to_what_is_read_whole(mode: dict) -> None:
    rng = random.Random(7)
    req = request(**mode)
    with_arguments = 0
    for _ in range(500):
        output = call_like(rng, required=bool(mode))
        text, whole, _ = ToolCallReader.read_whole(req, output, "length")
        with_arguments += any(c.function.arguments not in ("", "{}") for c in whole or [])
        reader = ToolCallReader(req)
        cuts = sorted(rng.sample(range(len(output) + 1), min(4, len(output) + 1)))
        chunks = [output[a:b] for a, b in zip([0, *cuts], [*cuts, len(output)], strict=True)]
        assert streamed_calls(reader, chunks, "length") == as_dicts(whole), output
        # without a call, all the text comes back; with calls, what came before them (auto) or nothing (required)
        before_calls = "" if mode else output[: output.find("<tool_call>")]
        assert text == (before_calls if whole else output), output
    assert with_arguments > 100  # the outputs made calls with arguments, not only text


# The parts of Llama 3.1's chat template that show tools and earlier calls (the whole template also handles dates,
# built-in tools and tools in the user turn). Its model answers a call as {"name": ..., "parameters": {...}}.
LLAMA3_TEMPLATE = """{{- bos_token }}
{%- if tools is not none %}
    {{- '<|start_header_id|>system<|end_header_id|>\\n\\nEnvironment: ipython\\n\\n' }}
    {{- 'Given the following functions, please respond with a JSON for a function call with its proper arguments '
        'that best answers the given prompt.\\n\\n' }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. '
        'Do not use variables.\\n\\n' }}
    {%- for t in tools %}{{- t | tojson(indent=4) }}{{- '\\n\\n' }}{%- endfor %}
    {{- '<|eot_id|>' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'assistant' and message.tool_calls %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- '}<|eot_id|>' }}
    {%- elif message.role == 'tool' %}
        {{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + message.content + '<|eot_id|>' }}
    {%- else %}
        {{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + message.content + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"""

QWEN_TOOLS_FRAGMENT = (
    "{%- if tools %}{{- '<tools>' }}{%- for tool in tools %}{{- tool | tojson }}{%- endfor %}{{- '</tools>' }}"
    "{{- 'For each function call, return a json object within <tool_call></tool_call> XML tags' }}{%- endif %}"
)


def test_a_template_teaching_llama3s_format_has_its_calls_read_so_others_hermes() -> None:
    from services.worker.model_store import TINY_CHAT_TEMPLATE
    from services.worker.tool_calls import call_format

    assert call_format(LLAMA3_TEMPLATE) == "llama3_json"
    assert call_format(QWEN_TOOLS_FRAGMENT) == "hermes"
    assert call_format(TINY_CHAT_TEMPLATE) == "hermes"  # it renders tools as Qwen2.5's template does
    assert call_format("{{ messages[0].content }}") == "hermes"  # no tools: ferry writes Hermes instructions in
    assert call_format(None) == "hermes"


def test_llama3s_template_gets_the_tools_and_earlier_calls_as_it_writes_them() -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    messages = [
        ChatMessage(role="user", content="Weather in Paris?"),
        ChatMessage(
            role="assistant",
            content="",
            tool_calls=[ToolCall(id="c1", function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}'))],
        ),
        ChatMessage(role="tool", content="18 C, sunny", tool_call_id="c1"),
    ]
    turns, tools = conversation(messages, [WEATHER], native=True)
    (prompt,), _ = render_jinja_template(
        [turns], tools=tools, chat_template=LLAMA3_TEMPLATE, add_generation_prompt=True, bos_token="<|begin_of_text|>"
    )
    assert '"name": "get_weather"' in prompt.split("<|eot_id|>")[0]  # the signature, in the system turn
    assert '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>' in prompt
    tool_turn = "<|start_header_id|>ipython<|end_header_id|>\n\n18 C, sunny<|eot_id|>"
    assert prompt.endswith(tool_turn + "<|start_header_id|>assistant<|end_header_id|>\n\n")


LLAMA3_OUTPUTS = [
    ('{"name": "get_weather", "parameters": {"city": "Paris",\n "days": [1, 2]}}',
     [("get_weather", {"city": "Paris", "days": [1, 2]})]),
    ('<|python_tag|>{"name": "get_time", "parameters": {}}', [("get_time", {})]),
    ('\n\n{"name": "get_time", "parameters": {}}; {"name": "get_weather", "parameters": {"city": "Rio \\"de\\" J"}}',
     [("get_time", {}), ("get_weather", {"city": 'Rio "de" J'})]),
    ('{"name": "get_weather", "arguments": {"city": "Lima"}}', [("get_weather", {"city": "Lima"})]),
]  # fmt: skip


def assert_read_alike(
    output: str,
    call_format: ToolCallFormat,
    text: str,
    expected: list[tuple[str, dict]],
    req: CompletionRequested | None = None,
) -> None:
    """``output`` read whole gives ``text`` and the ``expected`` calls; streamed in chunks of any size, the same text
    and the same calls, piece by piece. ``req``: the request (``request()`` by default)."""
    req = req or request()
    released, whole, reason = ToolCallReader.read_whole(req, output, "stop", call_format)
    assert (released, reason) == (text, "tool_calls")
    assert named_arguments(whole) == expected
    for size in (1, 2, 3, 7, len(output)):
        chunks = [output[i : i + size] for i in range(0, len(output), size)]
        assert streamed(ToolCallReader(req, call_format), chunks) == text, size
        assert streamed_calls(ToolCallReader(req, call_format), chunks) == as_dicts(whole), size


@pytest.mark.parametrize(("output", "expected"), LLAMA3_OUTPUTS)
def test_llama3_calls_are_read_whole_and_stream_alike_however_the_output_is_split(
    output: str, expected: list[tuple[str, dict]]
) -> None:
    assert_read_alike(output, "llama3_json", "", expected)


def test_a_llama3_answer_in_text_streams_as_text_from_its_first_word() -> None:
    reader = ToolCallReader(request(), "llama3_json")
    assert reader.feed("\n ") == ""  # white space waits: a call may follow
    assert reader.feed("It is") == "\n It is"
    assert reader.feed(' {"name": "get_time", "parameters": {}}') == ' {"name": "get_time", "parameters": {}}'
    assert reader.finish("stop") == ("", None, "stop")  # calls come only as the whole answer
    assert reader.pieces() == []


def test_a_llama3_json_answer_that_names_no_offered_tool_is_given_back_as_text() -> None:
    for output in ('{"answer": 42}', '{"name": "delete_everything", "parameters": {}}', "<|python_tag|>print(1)"):
        assert ToolCallReader.read_whole(request(), output, "stop", "llama3_json") == (output, None, "stop")
    # a text beginning like the python tag, but not it
    assert ToolCallReader.read_whole(request(), "<|pyt", "length", "llama3_json") == ("<|pyt", None, "length")


# The tool parts of Mistral 7B v0.3's chat template (tokenizer v3, before v11): tools before the last user turn, earlier
# calls after [TOOL_CALLS] with 9-character ids, results in [TOOL_RESULTS]. Its model answers [TOOL_CALLS] [{...}].
MISTRAL_TEMPLATE = """{{- bos_token }}
{%- set user_messages = messages | selectattr("role", "equalto", "user") | list %}
{%- for message in messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}{{- tool | tojson }}{%- if not loop.last %}{{- ", " }}{%- endif %}{%- endfor %}
            {{- "][/AVAILABLE_TOOLS]" }}
        {%- endif %}
        {{- "[INST] " + message["content"] + "[/INST]" }}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}{{- ", " }}{%- else %}{{- "]" + eos_token }}{%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool" %}
        {{- '[TOOL_RESULTS] {"content": ' + message.content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- endif %}
{%- endfor %}"""

# From tokenizer v11 (Mistral Small 3.2, Magistral), each earlier call is written [TOOL_CALLS]name[ARGS]{...}
MISTRAL_V11_FRAGMENT = (
    "{%- if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{%- endif %}"
    "{%- for tool_call in message.tool_calls %}{{- '[TOOL_CALLS]' + tool_call.function.name + '[ARGS]' }}"
    "{{- tool_call.function.arguments | tojson }}{%- endfor %}"
)


def test_a_mistral_template_has_its_calls_read_in_mistrals_format_with_special_tokens_kept() -> None:
    from services.worker.tool_calls import call_format, keeps_special_tokens

    assert call_format(MISTRAL_TEMPLATE) == "mistral"
    assert call_format(MISTRAL_V11_FRAGMENT) == "mistral"
    assert keeps_special_tokens(request(), "mistral")  # [TOOL_CALLS] is a special token
    assert not keeps_special_tokens(request(tool_choice="required"), "mistral")  # forced: a JSON schema instead
    assert not keeps_special_tokens(request(tool_choice="none"), "mistral")
    assert not keeps_special_tokens(request(), "hermes")


def test_mistrals_template_gets_earlier_calls_with_ids_it_takes_the_same_in_the_call_and_its_result() -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    from services.worker.tool_calls import mistral_call_id

    messages = TOOL_CONVERSATION[:3]  # OpenAI's ids (call_1) are refused by the template as they are
    with pytest.raises(Exception, match="length 9"):
        turns, tools = conversation(messages, [WEATHER], native=True)
        render_jinja_template([turns], tools=tools, chat_template=MISTRAL_TEMPLATE, eos_token="</s>")
    turns, tools = conversation(messages, [WEATHER], native=True, call_format="mistral")
    (prompt,), _ = render_jinja_template(
        [turns], tools=tools, chat_template=MISTRAL_TEMPLATE, bos_token="<s>", eos_token="</s>"
    )
    first, second = mistral_call_id("call_1"), mistral_call_id("call_2")
    assert len(first) == 9 and first.isalnum() and first != second
    assert prompt.startswith('<s>[AVAILABLE_TOOLS] [{"type": "function", "function": {"name": "get_weather"')
    assert f'[TOOL_CALLS] [{{"name": "get_weather", "arguments": {{"city": "Paris"}}, "id": "{first}"}}, ' in prompt
    assert prompt.endswith(f'[TOOL_RESULTS] {{"content": 18 C, "call_id": "{first}"}}[/TOOL_RESULTS]')


MISTRAL_OUTPUTS = [
    ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris",\n "days": [1, 2]}}]',
     "", [("get_weather", {"city": "Paris", "days": [1, 2]})]),
    ('Let me look.[TOOL_CALLS][{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": '
     '{"city": "Rio \\"de\\" J"}, "id": "a1b2c3d4e"}]', "Let me look.", [("get_time", {}), ("get_weather",
     {"city": 'Rio "de" J'})]),
    ('[TOOL_CALLS] {"name": "get_weather", "arguments": {"city": "Lima"}}', "", [("get_weather", {"city": "Lima"})]),
    ('[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}[TOOL_CALLS]get_time[ARGS]{}', "",
     [("get_weather", {"city": "Oslo"}), ("get_time", {})]),
    ('[TOOL_CALLS]get_time{}', "", [("get_time", {})]),
    ('[TOOL_CALLS] get_time [ARGS] {}', "", [("get_time", {})]),  # decoded with spaces around special tokens
    ('[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Bern"}', "", [("get_weather", {"city": "Bern"})]),
]  # fmt: skip


@pytest.mark.parametrize(("output", "text", "expected"), MISTRAL_OUTPUTS)
def test_mistral_calls_of_either_tokenizer_are_read_whole_and_stream_alike_however_split(
    output: str, text: str, expected: list[tuple[str, dict]]
) -> None:
    assert_read_alike(output, "mistral", text, expected)  # the text before the calls, none of the calls


def test_a_mistral_answer_without_calls_or_naming_no_offered_tool_is_text() -> None:
    for output in ("It is sunny [in] Paris.", '[TOOL_CALLS] [{"name": "delete_everything", "arguments": {}}]',
                   "[TOOL_CALLS]rm_rf[ARGS]{}", "[TOOL_CALLS] not json", "[TOOL_CALL"):  # fmt: skip
        assert ToolCallReader.read_whole(request(), output, "stop", "mistral") == (output, None, "stop")
    reader = ToolCallReader(request(), "mistral")
    assert reader.feed("Costs [") == "Costs "  # perhaps the start of [TOOL_CALLS]: held until known
    assert reader.feed("5]") == "[5]"


# The instructions of vLLM's pythonic tool templates (Llama 3.2, Llama 4) and of Gemma 3's: calls as a Python list
PYTHONIC_FRAGMENT = (
    "{%- if tools is not none %}{{- 'If you decide to invoke any of the function(s), you MUST put it in the format of "
    "[func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]' }}"
    "{{- tools | tojson(indent=4) }}{%- endif %}"
)


def test_a_template_teaching_python_calls_has_its_calls_read_as_python() -> None:
    from services.worker.tool_calls import call_format

    assert call_format(PYTHONIC_FRAGMENT) == "pythonic"
    assert call_format(LLAMA3_TEMPLATE) == "llama3_json" and call_format(MISTRAL_TEMPLATE) == "mistral"


PYTHONIC_OUTPUTS = [
    ('[get_weather(city="Paris", days=[1, 2])]', [("get_weather", {"city": "Paris", "days": [1, 2]})]),
    ("<|python_start|>[get_time(), get_weather(city='Rio \"de\" J, [RJ]')]<|python_end|>",
     [("get_time", {}), ("get_weather", {"city": 'Rio "de" J, [RJ]'})]),
    ('\n [get_weather(city="Lima", units=None, exact=True, at={"h": 1.5})]',
     [("get_weather", {"city": "Lima", "units": None, "exact": True, "at": {"h": 1.5}})]),
]  # fmt: skip


@pytest.mark.parametrize(("output", "expected"), PYTHONIC_OUTPUTS)
def test_python_calls_are_read_whole_and_stream_alike_however_the_output_is_split(
    output: str, expected: list[tuple[str, dict]]
) -> None:
    assert_read_alike(output, "pythonic", "", expected)


def test_a_python_call_is_announced_once_written_whole() -> None:
    reader = ToolCallReader(request(), "pythonic")
    reader.feed('[get_time(), get_weather(city="Pa')
    (first,) = reader.pieces()
    assert (first.name, first.arguments) == ("get_time", "{}")
    reader.feed('ris")]')
    (second,) = reader.pieces()
    assert (second.index, second.name, json.loads(second.arguments)) == (1, "get_weather", {"city": "Paris"})


def test_an_answer_that_is_no_python_list_of_offered_calls_is_text() -> None:
    for output in ("It is sunny.", "[1] First, the sky.", "[see here](https://example.com)", "[delete_everything()]",
                   "[get_weather(city=town)]", "[get_weather('Paris')]", "<|python_start|>print(1)", "[]"):  # fmt: skip
        assert ToolCallReader.read_whole(request(), output, "stop", "pythonic") == (output, None, "stop")
    reader = ToolCallReader(request(), "pythonic")
    assert reader.feed("[1") == ""  # perhaps a list of calls
    assert reader.feed("] First") == "[1] First"  # its first element is no call: text, streamed from here on
    assert reader.feed(", then") == ", then"


# The words of Qwen3-Coder's chat template that teach its calls: XML, each value as plain text
QWEN3_CODER_FRAGMENT = (
    "{%- if tools %}{{- 'If you choose to call a function ONLY reply in the following format with NO suffix:\\n\\n"
    "<tool_call>\\n<function=example_function_name>\\n<parameter=example_parameter_1>\\nvalue_1\\n</parameter>\\n"
    "</function>\\n</tool_call>' }}{%- endif %}"
)
FORECAST = FunctionTool(
    name="get_forecast",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "exact": {"type": "boolean"},
            "ratio": {"type": "number"},
            "where": {"type": "object"},
            "tags": {"type": "array"},
            "note": {"anyOf": [{"type": "null"}, {"type": "string"}]},
        },
    },
)


def test_qwen3_coders_template_has_its_calls_read_as_xml() -> None:
    from services.worker.tool_calls import call_format

    assert call_format(QWEN3_CODER_FRAGMENT) == "qwen3_xml"
    assert call_format(QWEN_TOOLS_FRAGMENT) == "hermes"  # Qwen2.5 and Qwen3: JSON inside <tool_call>


def test_xml_calls_are_read_whole_and_stream_alike_with_values_of_their_schemas_types() -> None:
    def xml(name: str, **values: str) -> str:
        parameters = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in values.items())
        return f"<tool_call>\n<function={name}>\n{parameters}</function>\n</tool_call>"

    weather = xml("get_weather", city="Paris")
    forecast = xml("get_forecast", city="42", days="3", exact="True", ratio="0.5", where='{"lat": 1}', tags="[1, 2]")
    texts = xml("get_forecast", days="three", ratio="2", where="{oops", note="null", city="Rio <de> Janeiro\nRJ")
    output = f"Let me look.\n{weather}\n{forecast}\n{texts}"
    expected = [
        ("get_weather", {"city": "Paris"}),
        ("get_forecast", {"city": "42", "days": 3, "exact": True, "ratio": 0.5, "where": {"lat": 1}, "tags": [1, 2]}),
        ("get_forecast", {"days": "three", "ratio": 2, "where": "{oops", "note": None, "city": "Rio <de> Janeiro\nRJ"}),
    ]
    assert_read_alike(output, "qwen3_xml", "Let me look.\n", expected, request(tools=[WEATHER, TIME, FORECAST]))


def test_an_xml_answer_without_calls_of_offered_tools_is_text() -> None:
    for output in ("Paris is sunny.", "<tool_call>\n<function=rm_rf>\n</function>\n</tool_call>", "<tool_call>\n<fun"):
        assert ToolCallReader.read_whole(request(), output, "stop", "qwen3_xml") == (output, None, "stop")


# DeepSeek V3's template writes earlier calls between these markers (V3.1 drops "function" and the code fence)
DEEPSEEK_FRAGMENT = (
    "{%- for message in messages %}{%- if message['tool_calls'] %}{%- for tool in message['tool_calls'] %}"
    "{{- '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + "
    "'\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>' }}"
    "{%- endfor %}{%- endif %}{%- endfor %}{%- if tools %}{{ tools | tojson }}{%- endif %}"
)
DEEPSEEK_OUTPUTS = [
    ("Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
     '{"city": "Paris",\n "days": [1, 2]}\n```<｜tool▁call▁end｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n'
     "```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>", "Checking.",
     [("get_weather", {"city": "Paris", "days": [1, 2]}), ("get_time", {})]),
    ('<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Rio \\"de\\" J"}<｜tool▁call▁end｜>'
     "<｜tool▁calls▁end｜>", "", [("get_weather", {"city": 'Rio "de" J'})]),
]  # fmt: skip


def test_deepseeks_template_has_its_calls_read_in_deepseeks_format() -> None:
    from services.worker.tool_calls import call_format

    assert call_format(DEEPSEEK_FRAGMENT) == "deepseek"


@pytest.mark.parametrize(("output", "text", "expected"), DEEPSEEK_OUTPUTS)
def test_deepseek_calls_of_v3_and_v31_are_read_whole_and_stream_alike_however_split(
    output: str, text: str, expected: list[tuple[str, dict]]
) -> None:
    assert_read_alike(output, "deepseek", text, expected)


def test_a_deepseek_answer_without_calls_of_offered_tools_is_text() -> None:
    unoffered = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>rm_rf<｜tool▁sep｜>{}<｜tool▁call▁end｜>"
    cut_short = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time"
    for output in ("Paris is sunny.", unoffered, cut_short):
        assert ToolCallReader.read_whole(request(), output, "stop", "deepseek") == (output, None, "stop")


def test_earlier_calls_arguments_suit_templates_that_read_them_as_an_object_or_join_them_as_text() -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    messages = [{"role": "assistant", "tool_calls": [{"type": "function"}]}]
    turns, tools = conversation(TOOL_CONVERSATION[:2], [WEATHER], native=True, call_format="deepseek")
    (joined,), _ = render_jinja_template([turns], tools=tools, chat_template=DEEPSEEK_FRAGMENT)
    assert 'get_weather\n```json\n{"city": "Paris"}\n```' in joined  # DeepSeek's: '...' + arguments
    arguments = turns[1]["tool_calls"][0]["function"]["arguments"]
    items = "{% for k, v in arguments | items %}{{ k }}={{ v }}{% endfor %}|{{ arguments | tojson }}"
    (read,), _ = render_jinja_template([messages], chat_template=items, arguments=arguments)
    assert read == 'city=Paris|{"city": "Paris"}'  # Qwen3-Coder's (|items) and most others' (|tojson)


# GLM-4.5's template writes earlier calls so (GLM-4.7's drops the newlines); its tool instructions the same way
GLM_FRAGMENT = (
    "{%- for m in messages %}{%- if m.role == 'assistant' and m.tool_calls %}{% for tc in m.tool_calls %}"
    "{%- if tc.function %}{%- set tc = tc.function %}{%- endif %}{{ '\\n<tool_call>' + tc.name }}\n"
    "{% set _args = tc.arguments %}{% for k, v in _args.items() %}\n<arg_key>{{ k }}</arg_key>\n"
    "<arg_value>{{ v | tojson(ensure_ascii=False) if v is not string else v }}</arg_value>\n{% endfor %}\n"
    "</tool_call>{% endfor %}{%- elif m.role == 'tool' %}{{- '<|observation|>\\n<tool_response>\\n' + m.content + "
    "'\\n</tool_response>' }}{%- endif %}{%- endfor %}{%- if tools %}{{ tools | tojson }}{%- endif %}"
)
# Kimi K2's: the call's id is its header, the arguments as the client sent them
KIMI_FRAGMENT = (
    "{%- for message in messages %}{%- if message['role'] == 'assistant' and message.get('tool_calls') -%}"
    "<|tool_calls_section_begin|>{%- for tool_call in message['tool_calls'] -%}"
    "<|tool_call_begin|>{{ tool_call['id'] }}<|tool_call_argument_begin|>{% if tool_call['function']['arguments'] "
    "is string %}{{ tool_call['function']['arguments'] }}{% else %}{{ tool_call['function']['arguments'] | tojson }}"
    "{% endif %}<|tool_call_end|>{%- endfor -%}<|tool_calls_section_end|>{%- elif message['role'] == 'tool' -%}"
    "## Return of {{ message.tool_call_id }}\n{{ message.content }}{%- endif -%}{%- endfor -%}"
    "{%- if tools %}{{ tools | tojson }}{%- endif %}"
)


def test_glms_and_kimis_templates_have_their_calls_read_in_their_formats_with_special_tokens_kept() -> None:
    from services.worker.tool_calls import call_format, keeps_special_tokens

    assert call_format(GLM_FRAGMENT) == "glm"  # it writes <tool_call> too: not Hermes
    assert call_format(KIMI_FRAGMENT) == "kimi_k2"
    for model_format in ("glm", "kimi_k2"):  # the markers are special tokens, which the engine drops unless asked
        assert keeps_special_tokens(request(), model_format)
        assert not keeps_special_tokens(request(tool_choice="required"), model_format)  # forced: JSON, no markers


def test_glm_calls_are_read_whole_and_stream_alike_with_values_of_their_schemas_types() -> None:
    glm45 = (
        "Let me check.\n<tool_call>get_forecast\n<arg_key>city</arg_key>\n<arg_value>42</arg_value>\n"
        "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n<arg_key>where</arg_key>\n<arg_value>"
        '{"lat": 1}</arg_value>\n</tool_call>'
    )
    glm47 = "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Rio <de> Janeiro</arg_value></tool_call>"
    output = f"{glm45}\n<tool_call>get_time</tool_call>{glm47}"
    expected = [
        ("get_forecast", {"city": "42", "days": 3, "where": {"lat": 1}}),
        ("get_time", {}),
        ("get_weather", {"city": "Rio <de> Janeiro"}),
    ]
    assert_read_alike(output, "glm", "Let me check.\n", expected, request(tools=[WEATHER, TIME, FORECAST]))


KIMI_OUTPUT = (
    "Checking.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>"
    '{"city": "Paris",\n "days": [1, 2]}<|tool_call_end|><|tool_call_begin|>functions.get_time:1'
    "<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>"
)


def test_kimi_calls_are_read_whole_and_stream_alike_with_the_ids_the_model_gave_them() -> None:
    assert_read_alike(
        KIMI_OUTPUT, "kimi_k2", "Checking.", [("get_weather", {"city": "Paris", "days": [1, 2]}), ("get_time", {})]
    )
    _, whole, _ = ToolCallReader.read_whole(request(), KIMI_OUTPUT, "stop", "kimi_k2")
    # as vLLM's kimi_k2 parser gives them: the header, which the template writes back for the call and its result
    assert [c.id for c in whole or []] == ["functions.get_weather:0", "functions.get_time:1"]


def test_a_glm_or_kimi_answer_without_calls_of_offered_tools_is_text() -> None:
    for model_format, outputs in {
        "glm": ["Paris is sunny.", "<tool_call>rm_rf</tool_call>", "<tool_call>get_ti"],
        "kimi_k2": [
            "Paris is sunny.",
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.rm_rf:0<|tool_call_argument_begin|>{}",
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_ti",
        ],
    }.items():
        for output in outputs:
            assert ToolCallReader.read_whole(request(), output, "stop", model_format) == (output, None, "stop")


def test_glms_and_kimis_templates_get_earlier_calls_and_results_as_they_write_them() -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    def rendered(template: str, model_format: ToolCallFormat, ids: tuple[str, str]) -> str:
        calls = [
            ToolCall(id=ids[0], function=FunctionCall(name="get_forecast", arguments='{"city": "Paris", "days": 3}')),
            ToolCall(id=ids[1], function=FunctionCall(name="get_time", arguments="{}")),
        ]
        messages = [
            ChatMessage(role="user", content="Weather in Paris?"),
            ChatMessage(role="assistant", content="", tool_calls=calls),
            ChatMessage(role="tool", content="18 C", tool_call_id=ids[0]),
        ]
        turns, tools = conversation(messages, [FORECAST, TIME], native=True, call_format=model_format)
        (prompt,), _ = render_jinja_template([turns], tools=tools, chat_template=template)
        return prompt

    glm = rendered(GLM_FRAGMENT, "glm", ("call_1", "call_2"))
    # a string as it is, a number as JSON: as GLM reads them back (glm_calls)
    assert "<tool_call>get_forecast\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n" in glm
    assert "<arg_key>days</arg_key>\n<arg_value>3</arg_value>" in glm
    assert "<tool_response>\n18 C\n</tool_response>" in glm
    kimi = rendered(KIMI_FRAGMENT, "kimi_k2", ("functions.get_forecast:0", "functions.get_time:1"))
    assert '<|tool_call_begin|>functions.get_forecast:0<|tool_call_argument_begin|>{"city": "Paris", "days": 3}' in kimi
    assert "## Return of functions.get_forecast:0\n18 C" in kimi


# MiniMax M2's template writes earlier calls so
MINIMAX_FRAGMENT = (
    "{%- for m in messages %}{%- if m.tool_calls %}<minimax:tool_call>\n{%- for tc in m.tool_calls %}"
    '<invoke name="{{ tc.function.name }}">\n{%- for k, v in tc.function.arguments.items() %}'
    '<parameter name="{{ k }}">{{ v | tojson if v is not string else v }}</parameter>\n{%- endfor %}</invoke>\n'
    "{%- endfor %}</minimax:tool_call>{%- endif %}{%- endfor %}{%- if tools %}{{ tools | tojson }}{%- endif %}"
)


def test_minimax_calls_are_read_whole_and_stream_alike_with_values_of_their_schemas_types() -> None:
    from services.worker.tool_calls import call_format, keeps_special_tokens

    assert call_format(MINIMAX_FRAGMENT) == "minimax" and keeps_special_tokens(request(), "minimax")
    output = (
        '<think>Look it up.</think>\nLet me check.\n<minimax:tool_call>\n<invoke name="get_forecast">\n'
        '<parameter name="city">42</parameter>\n<parameter name="days">3</parameter>\n'
        "<parameter name='where'>{\"lat\": 1}</parameter>\n</invoke>\n<invoke name=get_time></invoke>\n"
        "</minimax:tool_call>"
    )
    expected = [("get_forecast", {"city": "42", "days": 3, "where": {"lat": 1}}), ("get_time", {})]
    text = "<think>Look it up.</think>\nLet me check.\n"  # the reasoning reader takes the block off before
    assert_read_alike(output, "minimax", text, expected, request(tools=[WEATHER, TIME, FORECAST]))
    for text in ("Paris is sunny.", '<minimax:tool_call><invoke name="rm_rf"></invoke>', "<minimax:tool_call><inv"):
        assert ToolCallReader.read_whole(request(), text, "stop", "minimax") == (text, None, "stop")


def test_minimaxs_template_gets_earlier_calls_as_it_writes_them() -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    turns, tools = conversation(TOOL_CONVERSATION[:2], [WEATHER, TIME], native=True, call_format="minimax")
    (prompt,), _ = render_jinja_template([turns], tools=tools, chat_template=MINIMAX_FRAGMENT)
    assert '<invoke name="get_weather"><parameter name="city">Paris</parameter></invoke>' in prompt
    assert '<invoke name="get_time"></invoke>' in prompt


# Granite 3's (as vLLM's example template for its granite parser writes it): earlier calls after <|tool_call|>, as a
# JSON array of the calls' functions
GRANITE_FRAGMENT = (
    "{%- if tools %}<|start_of_role|>available_tools<|end_of_role|>{{ tools | tojson }}<|end_of_text|>\n{%- endif %}"
    "{%- for m in messages %}{%- if m.role == 'assistant' and m.tool_calls %}"
    "<|start_of_role|>assistant<|end_of_role|><|tool_call|>{{ m.tool_calls | map(attribute='function') | list | "
    "tojson }}<|end_of_text|>\n{%- elif m.role == 'tool' %}<|start_of_role|>tool_response<|end_of_role|>"
    "{{ m.content }}<|end_of_text|>\n{%- else %}<|start_of_role|>{{ m.role }}<|end_of_role|>{{ m.content }}"
    "<|end_of_text|>\n{%- endif %}{%- endfor %}"
)
# a template that writes earlier calls as vLLM's jamba parser reads them: a JSON array inside <tool_calls>
JAMBA_FRAGMENT = (
    "{%- for m in messages %}{{ m.content or '' }}{%- if m.tool_calls %}<tool_calls>{{ m.tool_calls | "
    "map(attribute='function') | list | tojson }}</tool_calls>{%- endif %}{%- endfor %}"
    "{%- if tools %}{{ tools | tojson }}{%- endif %}"
)


def test_granites_and_jambas_templates_have_their_calls_read_in_their_formats_with_special_tokens_kept() -> None:
    from services.worker.tool_calls import call_format, keeps_special_tokens

    assert call_format(GRANITE_FRAGMENT) == "granite" and call_format(JAMBA_FRAGMENT) == "jamba"
    for model_format in ("granite", "jamba"):
        assert keeps_special_tokens(request(), model_format)
        assert not keeps_special_tokens(request(tool_choice="required"), model_format)


GRANITE_OUTPUTS = [
    ('<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris",\n "days": [1, 2]}}]',
     [("get_weather", {"city": "Paris", "days": [1, 2]})]),
    ('\n<tool_call> [{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "Rio"}}]',
     [("get_time", {}), ("get_weather", {"city": "Rio"})]),
    ('[{"name": "get_time", "arguments": {}}]', [("get_time", {})]),  # the tag dropped as a special token
]  # fmt: skip


@pytest.mark.parametrize(("output", "expected"), GRANITE_OUTPUTS)
def test_granite_calls_are_read_whole_and_stream_alike_however_the_output_is_split(
    output: str, expected: list[tuple[str, dict]]
) -> None:
    assert_read_alike(output, "granite", "", expected)


def test_a_granite_answer_that_is_no_array_of_offered_calls_is_text_and_streams_once_that_shows() -> None:
    for output in ("It is sunny.", "[1] First, the sky.", '[{"name": "rm_rf", "arguments": {}}]', "<|tool_call|>hm",
                   "<|tool_", "[]", 'Calls: [{"name": "get_time", "arguments": {}}]'):  # fmt: skip
        assert ToolCallReader.read_whole(request(), output, "stop", "granite") == (output, None, "stop")
    reader = ToolCallReader(request(), "granite")
    assert reader.feed("\n") == ""  # white space waits: calls may follow
    assert reader.feed("[") == ""  # perhaps an array of calls
    assert reader.feed("1") == "\n[1"  # its first element is no call object: text from here on
    assert reader.feed("] First") == "] First"


def test_jamba_calls_are_read_whole_and_stream_alike_and_what_names_no_offered_tool_is_text() -> None:
    output = (
        'Let me look.<tool_calls>[{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": '
        '{"city": "Rio \\"de\\" J"}}]</tool_calls>'
    )
    assert_read_alike(output, "jamba", "Let me look.", [("get_time", {}), ("get_weather", {"city": 'Rio "de" J'})])
    for text in ("Paris is sunny.", '<tool_calls>[{"name": "rm_rf", "arguments": {}}]</tool_calls>', "<tool_ca"):
        assert ToolCallReader.read_whole(request(), text, "stop", "jamba") == (text, None, "stop")


@pytest.mark.parametrize(("fragment", "model_format"), [(GRANITE_FRAGMENT, "granite"), (JAMBA_FRAGMENT, "jamba")])
def test_granites_and_jambas_templates_get_earlier_calls_as_their_models_write_them(
    fragment: str, model_format: ToolCallFormat
) -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    turns, tools = conversation(TOOL_CONVERSATION[:2], [WEATHER, TIME], native=True, call_format=model_format)
    (prompt,), _ = render_jinja_template([turns], tools=tools, chat_template=fragment)
    # what the template wrote is read back as the same calls
    opening, closing = ("<|tool_call|>", "<|end_of_text|>") if model_format == "granite" else ("<tool_calls>", "")
    start = prompt.index(opening)
    written = prompt[start : prompt.index(closing, start)] if closing else prompt[start:]
    _, calls, _ = ToolCallReader.read_whole(request(), written, "stop", model_format)
    assert named_arguments(calls) == named_arguments(TOOL_CONVERSATION[1].tool_calls)


# Phi-4-mini's, as vLLM's example template for its phi4_mini_json parser writes tools and earlier calls (its own
# lines, the instructions cut short)
PHI4_FRAGMENT = (
    '{%- if tools %}all function calls should be generated in a single JSON list formatted as functools[{"name": '
    '[function name], "arguments": [function arguments as JSON]}, ...]\n{%- for t in tools %}'
    "{{- t | tojson(indent=4) }}{{- '\\n\\n' }}{%- endfor %}{%- endif %}<|end|>{%- for message in messages %}"
    "<|{{ message.role }}|>{%- if message.content %}{{ message.content }}{%- elif message.tool_calls %}"
    '{%- for call in message.tool_calls %}{"name": "{{ call.function.name }}", "arguments": '
    "{{ call.function.arguments }}}{%- if not loop.last %},{% endif %}{%- endfor %}{%- endif %}<|end|>{%- endfor %}"
)


def test_phi4_minis_calls_are_read_whole_and_stream_alike_and_what_is_no_call_is_text() -> None:
    from services.worker.tool_calls import call_format

    assert call_format(PHI4_FRAGMENT) == "phi4_mini"
    output = (
        'I will look. functools[{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": '
        '{"city": "Rio \\"de\\" J"}}]'
    )
    expected = [("get_time", {}), ("get_weather", {"city": 'Rio "de" J'})]
    assert_read_alike(output, "phi4_mini", "I will look. ", expected)
    for text in ("import functools\nprint(1)", 'functools[{"name": "rm_rf", "arguments": {}}]', "functools"):
        assert ToolCallReader.read_whole(request(), text, "stop", "phi4_mini") == (text, None, "stop")
    # a Python answer that imports functools streams as text: the word alone opens no call
    chunks = ["import func", "tools\n", "print(1)"]
    assert streamed(ToolCallReader(request(), "phi4_mini"), chunks) == "import functools\nprint(1)"


def test_phi4_minis_template_gets_earlier_calls_as_its_model_writes_them() -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    calling = ChatMessage(role="assistant", content="", tool_calls=TOOL_CONVERSATION[1].tool_calls)
    turns, tools = conversation([TOOL_CONVERSATION[0], calling], [WEATHER, TIME], native=True, call_format="phi4_mini")
    (prompt,), _ = render_jinja_template([turns], tools=tools, chat_template=PHI4_FRAGMENT)
    assert '"name": "get_weather"' in prompt.split("<|end|>")[0]  # the tools, in the instructions
    written = prompt.split("<|assistant|>")[1].split("<|end|>")[0]  # the calls, as the model writes them
    _, calls, _ = ToolCallReader.read_whole(request(), f"functools[{written}]", "stop", "phi4_mini")
    assert named_arguments(calls) == named_arguments(TOOL_CONVERSATION[1].tool_calls)


# InternLM2's, as vLLM's example template for its internlm2 parser writes tools and earlier calls (its own lines)
INTERNLM2_FRAGMENT = (
    '{%- if tools %}{{- "<|im_start|>system name=<|plugin|>\\n[" }}{%- for tool in tools %}{{- tool.function|tojson }}'
    '{%- if not loop.last %}{{- ", " }}{%- else %}{{- "]" }}{%- endif %}{%- endfor %}{{- "<|im_end|>\\n" }}{%- endif %}'
    '{%- for message in messages %}{%- if message.tool_calls %}{{- "<|im_start|>assistant\\n" + message.content }}'
    "{%- for tool_call in message.tool_calls %}{%- set function=tool_call.function %}"
    '{{- "<|action_start|><|plugin|>\\n" }}{{- \'{"name": "\' + function.name + \'", \'}}'
    "{{- '\"arguments\": ' + function.arguments|string + '}' }}{{- \"<|action_end|>\" }}{%- endfor %}"
    '{{- "<|im_end|>\\n" }}{%- endif %}{%- endfor %}'
)


def test_internlm2_calls_are_read_whole_and_stream_alike_and_what_names_no_offered_tool_is_text() -> None:
    from services.worker.tool_calls import call_format, keeps_special_tokens

    assert call_format(INTERNLM2_FRAGMENT) == "internlm2" and keeps_special_tokens(request(), "internlm2")
    output = (
        'Let me look.<|action_start|><|plugin|>\n{"name": "get_weather", "parameters": {"city": "Rio \\"de\\" J"}}'
        "<|action_end|>"
    )
    assert_read_alike(output, "internlm2", "Let me look.", [("get_weather", {"city": 'Rio "de" J'})])
    for text in ("Paris is sunny.", '<|action_start|><|plugin|>\n{"name": "rm_rf", "arguments": {}}<|action_end|>'):
        assert ToolCallReader.read_whole(request(), text, "stop", "internlm2") == (text, None, "stop")


def test_internlm2s_template_gets_earlier_calls_as_its_model_writes_them() -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    turns, tools = conversation(TOOL_CONVERSATION[:2], [WEATHER, TIME], native=True, call_format="internlm2")
    (prompt,), _ = render_jinja_template([turns], tools=tools, chat_template=INTERNLM2_FRAGMENT)
    assert '"name": "get_weather"' in prompt.split("<|im_end|>")[0]  # the tools, in the plugin's system turn
    written = prompt[prompt.index("<|im_start|>assistant\n") :]
    text, calls, _ = ToolCallReader.read_whole(request(), written, "stop", "internlm2")
    assert text == "<|im_start|>assistant\nChecking."
    assert named_arguments(calls) == named_arguments(TOOL_CONVERSATION[1].tool_calls)


# Olmo 3's, as vLLM's example template for its olmo3 parser writes earlier calls (its own lines)
OLMO3_FRAGMENT = """{%- if tools %}To call functions, respond with a pythonic function call wrapped in
<function_calls></function_calls> XML tags.{% for tool in tools %}{{ tool.function | tojson }}{% endfor %}{%- endif %}
{%- for message in messages %}{%- if message.role == "assistant" and message.tool_calls %}
{{- "<|im_start|>assistant\\n<function_calls>\\n" }}
{%- for tool_call in message.tool_calls %}{%- set tool_call = tool_call.function %}{{- tool_call.name + "(" }}
{%- set args = tool_call.arguments %}{%- for key, value in args.items() %}{{- key + "=" }}
{%- if value is string %}{{- "'" + value + "'" }}{%- elif value is none %}{{- "null" }}
{%- elif value is sameas true %}{{- "true" }}{%- elif value is sameas false %}{{- "false" }}
{%- else %}{{- value | tojson }}{%- endif %}{%- if not loop.last %}{{- ", " }}{%- endif %}{%- endfor %}{{- ")" }}
{%- if not loop.last %}{{- "\\n" }}{%- endif %}{%- endfor %}{{- "\\n</function_calls><|im_end|>\\n" }}
{%- endif %}{%- endfor %}"""


def test_olmo3_calls_are_read_whole_and_stream_alike_with_jsons_literals() -> None:
    from services.worker.tool_calls import call_format

    assert call_format(OLMO3_FRAGMENT) == "olmo3"
    output = (
        "Let me look.\n<function_calls>\nget_forecast(city='Rio \"de\" J', days=3, exact=true, where=null, "
        'ratio={"a": [1, false]})\nget_time()\n</function_calls>'
    )
    expected = [
        ("get_forecast", {"city": 'Rio "de" J', "days": 3, "exact": True, "where": None, "ratio": {"a": [1, False]}}),
        ("get_time", {}),
    ]
    assert_read_alike(output, "olmo3", "Let me look.\n", expected, request(tools=[WEATHER, TIME, FORECAST]))
    for text in (
        "Paris is sunny.",
        "<function_calls>\nrm_rf()\n</function_calls>",  # no offered tool
        "<function_calls>\nget_time(zone=here)\n</function_calls>",  # a name, not a value
        "<function_calls>\nget_time(",  # cut short
    ):
        assert ToolCallReader.read_whole(request(), text, "stop", "olmo3") == (text, None, "stop")


def test_olmo3s_template_gets_earlier_calls_as_its_model_writes_them() -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    flags = ToolCall(
        id="c", function=FunctionCall(name="get_forecast", arguments='{"days": 2, "exact": false, "x": null}')
    )
    calling = ChatMessage(role="assistant", content="", tool_calls=[*TOOL_CONVERSATION[1].tool_calls, flags])
    turns, tools = conversation([TOOL_CONVERSATION[0], calling], [WEATHER, TIME], native=True, call_format="olmo3")
    (prompt,), _ = render_jinja_template([turns], tools=tools, chat_template=OLMO3_FRAGMENT)
    written = prompt[prompt.index("<function_calls>\n") : prompt.index("</function_calls><|im_end|>") + 17]
    _, calls, _ = ToolCallReader.read_whole(request(tools=[WEATHER, TIME, FORECAST]), written, "stop", "olmo3")
    assert named_arguments(calls) == named_arguments(calling.tool_calls)


# Gemma 4's template: how it writes a value, and earlier calls (its own lines, with the rest of the turn left out)
GEMMA4_FRAGMENT = """{%- macro format_argument(argument, escape_keys=True) -%}
    {%- if argument is string -%}
        {{- '<|"|>' + argument + '<|"|>' -}}
    {%- elif argument is boolean -%}
        {{- 'true' if argument else 'false' -}}
    {%- elif argument is mapping -%}
        {{- '{' -}}
        {%- set ns = namespace(found_first=false) -%}
        {%- for key, value in argument | dictsort -%}
            {%- if ns.found_first %},{% endif -%}
            {%- set ns.found_first = true -%}
            {%- if escape_keys -%}
                {{- '<|"|>' + key + '<|"|>' -}}
            {%- else -%}
                {{- key -}}
            {%- endif -%}
            :{{- format_argument(value, escape_keys=escape_keys) -}}
        {%- endfor -%}
        {{- '}' -}}
    {%- elif argument is sequence -%}
        {{- '[' -}}
        {%- for item in argument -%}
            {{- format_argument(item, escape_keys=escape_keys) -}}
            {%- if not loop.last %},{% endif -%}
        {%- endfor -%}
        {{- ']' -}}
    {%- else -%}
        {{- argument -}}
    {%- endif -%}
{%- endmacro -%}
{%- for message in messages -%}
            {%- if message['tool_calls'] -%}
                {%- for tool_call in message['tool_calls'] -%}
                    {%- set function = tool_call['function'] -%}
                    {{- '<|tool_call>call:' + function['name'] + '{' -}}
                    {%- if function['arguments'] is mapping -%}
                        {%- set ns_args = namespace(found_first=false) -%}
                        {%- for key, value in function['arguments'] | dictsort -%}
                            {%- if ns_args.found_first %},{% endif -%}
                            {%- set ns_args.found_first = true -%}
                            {{- key -}}:{{- format_argument(value, escape_keys=False) -}}
                        {%- endfor -%}
                    {%- elif function['arguments'] is string -%}
                        {{- function['arguments'] -}}
                    {%- endif -%}
                    {{- '}<tool_call|>' -}}
                {%- endfor -%}
            {%- endif -%}
{%- endfor -%}{%- if tools %}{{ tools | tojson }}{%- endif %}"""


def test_gemma4_calls_are_read_whole_and_stream_alike_in_its_notation() -> None:
    from services.worker.gemma4 import gemma4_calls
    from services.worker.tool_calls import call_format, keeps_special_tokens

    assert call_format(GEMMA4_FRAGMENT) == "gemma4" and keeps_special_tokens(request(), "gemma4")
    output = (
        'Let me check.<|tool_call>call:get_forecast{city:<|"|>Rio, "de" {J}<|"|>,days:3,exact:true,'
        'where:{lat:1.5,tags:[<|"|>a<|"|>,2,null]},note:<|"|><|"|>}<tool_call|><|tool_call>call:get_time{}<tool_call|>'
    )
    forecast = {"city": 'Rio, "de" {J}', "days": 3, "exact": True, "where": {"lat": 1.5, "tags": ["a", 2, None]}}
    expected = [("get_forecast", forecast | {"note": ""}), ("get_time", {})]
    assert_read_alike(output, "gemma4", "Let me check.", expected, request(tools=[WEATHER, TIME, FORECAST]))
    # keys written as strings, spaces between the parts, and "call" left out (some checkpoints, as vLLM notes)
    spaced = '<|tool_call>:get_forecast{ <|"|>days<|"|> : 2 , where : [ ] }<tool_call|>'
    assert gemma4_calls(spaced) == [("get_forecast", '{"days": 2, "where": []}')]


def test_a_gemma4_answer_without_calls_of_offered_tools_is_text_and_a_call_keeps_what_was_written() -> None:
    unoffered, no_call_word = "<|tool_call>call:rm_rf{}<tool_call|>", "<|tool_call>get_time{}<tool_call|>"
    for output in ("Paris is sunny.", unoffered, no_call_word, "<|tool_call>call:get_wea"):
        assert ToolCallReader.read_whole(request(), output, "stop", "gemma4") == (output, None, "stop")
    # a call cut short in a string keeps what was written, as a JSON call does; what is not a pair ends the arguments
    for output, arguments in [
        ('<|tool_call>call:get_weather{city:<|"|>Pa', '{"city": "Pa'),
        ('<|tool_call>call:get_weather{city:<|"|>Pa<|"|>, <|"|>x:y<|"|>}<tool_call|>', '{"city": "Pa"}'),
    ]:
        _, calls, _ = ToolCallReader.read_whole(request(), output, "length", "gemma4")
        assert [(c.function.name, c.function.arguments) for c in calls or []] == [("get_weather", arguments)]


def test_a_gemma4_string_argument_streams_as_written_and_other_values_come_whole() -> None:
    reader = ToolCallReader(request(tools=[FORECAST]), "gemma4")
    reader.feed("Sure.<|tool_call>call:get_forecast{")
    (first,) = reader.pieces()
    assert (first.name, first.arguments) == ("get_forecast", "{")
    reader.feed("days:1")  # a number may go on
    assert reader.pieces() == []
    reader.feed('2,city:<|"|>Rio "de"')
    assert [p.arguments for p in reader.pieces()] == ['"days": 12, "city": "Rio \\"de\\"']
    reader.feed(' J<|"')  # a part of the string's end waits
    assert [p.arguments for p in reader.pieces()] == [" J"]
    reader.feed("|>}<tool_call|>")
    reader.finish("stop")
    assert [p.arguments for p in reader.pieces()] == ['"}']


def test_gemma4s_template_gets_earlier_calls_as_its_model_writes_them() -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    nested = ToolCall(id="c3", function=FunctionCall(name="get_forecast", arguments='{"where": {"lat": [1, true]}}'))
    conversation_turns = [*TOOL_CONVERSATION[:1], TOOL_CONVERSATION[1].model_copy(update={"tool_calls": [
        *TOOL_CONVERSATION[1].tool_calls, nested]})]  # fmt: skip
    turns, tools = conversation(conversation_turns, [WEATHER, TIME, FORECAST], native=True, call_format="gemma4")
    (prompt,), _ = render_jinja_template([turns], tools=tools, chat_template=GEMMA4_FRAGMENT)
    assert prompt.startswith('<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>')
    _, calls, _ = ToolCallReader.read_whole(request(tools=[WEATHER, TIME, FORECAST]), prompt, "stop", "gemma4")
    assert named_arguments(calls) == [
        ("get_weather", {"city": "Paris"}), ("get_time", {}), ("get_forecast", {"where": {"lat": [1, True]}})
    ]  # fmt: skip


# LFM2's template writes earlier calls so: a Python list between its call markers
LFM2_FRAGMENT = (
    "{%- for m in messages %}{{ m.content }}{%- if m.tool_calls %}<|tool_call_start|>[{%- for tc in m.tool_calls %}"
    "{{ tc.function.name }}({%- for k, v in tc.function.arguments.items() %}{{ k }}={{ v | tojson }}"
    "{%- if not loop.last %}, {% endif %}{%- endfor %}){%- if not loop.last %}, {% endif %}{%- endfor %}]"
    "<|tool_call_end|>{%- endif %}{%- endfor %}{%- if tools %}{{ tools | tojson }}{%- endif %}"
)


def test_lfm2_calls_are_read_whole_and_stream_alike_as_python_between_its_markers() -> None:
    from services.worker.tool_calls import call_format, keeps_special_tokens

    assert call_format(LFM2_FRAGMENT) == "lfm2" and keeps_special_tokens(request(), "lfm2")
    output = 'Checking.<|tool_call_start|>[get_weather(city="Paris"), get_time()]<|tool_call_end|>'
    assert_read_alike(output, "lfm2", "Checking.", [("get_weather", {"city": "Paris"}), ("get_time", {})])
    for text in ("Paris is sunny [1].", "<|tool_call_start|>[rm_rf()]<|tool_call_end|>", "<|tool_call_st"):
        assert ToolCallReader.read_whole(request(), text, "stop", "lfm2") == (text, None, "stop")
    turns, tools = conversation(TOOL_CONVERSATION[:2], [WEATHER, TIME], native=True, call_format="lfm2")
    from transformers.utils.chat_template_utils import render_jinja_template

    (prompt,), _ = render_jinja_template([turns], tools=tools, chat_template=LFM2_FRAGMENT)
    written = prompt[prompt.index("<|tool_call_start|>") : prompt.index("<|tool_call_end|>")]
    assert written == '<|tool_call_start|>[get_weather(city="Paris"), get_time()]'
    _, calls, _ = ToolCallReader.read_whole(request(), written, "stop", "lfm2")
    assert [c.function.name for c in calls or []] == ["get_weather", "get_time"]


def test_seed_oss_calls_are_read_as_qwen3_coders_xml_inside_its_own_tags() -> None:
    from services.worker.tool_calls import call_format, keeps_special_tokens

    # Seed-OSS's template writes Qwen3-Coder's XML, inside tags of its own
    seed_fragment = QWEN3_CODER_FRAGMENT.replace("<tool_call>", "<seed:tool_call>").replace(
        "</tool_call>", "</seed:tool_call>"
    )
    assert call_format(seed_fragment) == "seed_oss" and keeps_special_tokens(request(), "seed_oss")
    output = (
        "Let me check.<seed:tool_call>\n<function=get_forecast>\n<parameter=city>\n42\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n</function>\n</seed:tool_call>"
    )
    expected = [("get_forecast", {"city": "42", "days": 3})]
    assert_read_alike(output, "seed_oss", "Let me check.", expected, request(tools=[WEATHER, TIME, FORECAST]))
    for text in ("Paris is sunny.", "<tool_call>\n<function=get_time>\n</function>\n</tool_call>"):
        assert ToolCallReader.read_whole(request(), text, "stop", "seed_oss") == (text, None, "stop")


def test_a_models_calls_opening_is_known_where_its_calls_may_follow_text() -> None:
    from services.worker.tool_calls import calls_openings

    assert calls_openings("hermes") == calls_openings("qwen3_xml") == calls_openings("glm") == ("<tool_call>",)
    assert calls_openings("kimi_k2") == ("<|tool_calls_section_begin|>",)
    assert calls_openings("gemma4") == ("<|tool_call>",) and calls_openings("seed_oss") == ("<seed:tool_call>",)
    assert calls_openings("deepseek_v32") == ("<｜DSML｜function_calls>",)
    assert calls_openings("deepseek_v4") == ("<｜DSML｜tool_calls>", "<｜DSML｜toolcalls>", "<｜DSML｜tool>")
    # calls that are the whole answer have no opening inside it
    assert calls_openings("llama3_json") == calls_openings("pythonic") == calls_openings("granite") == ()


@pytest.mark.parametrize(
    ("model_format", "opening", "before_value", "value_end", "call_end"),
    [
        ("qwen3_xml", "<tool_call>\n<function=get_forecast>\n", "<parameter=days>\n3\n</parameter>\n<parameter=city>\n",
         "\n</parameter>", "\n</function>\n</tool_call>"),
        ("glm", "<tool_call>get_forecast\n",
         "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n<arg_key>city</arg_key>\n<arg_value>",
         "</arg_value>", "\n</tool_call>"),
        ("minimax", '<minimax:tool_call>\n<invoke name="get_forecast">\n',
         '<parameter name="days">3</parameter>\n<parameter name="city">', "</parameter>",
         "\n</invoke>\n</minimax:tool_call>"),
    ],
)  # fmt: skip
def test_a_string_argument_streams_as_written_and_other_values_come_whole(
    model_format: ToolCallFormat, opening: str, before_value: str, value_end: str, call_end: str
) -> None:
    """The XML-like formats' calls are announced once named, and a string value streams as the model writes it (a
    coding agent's file content, say), where it once came only with the call's end."""
    reader = ToolCallReader(request(tools=[FORECAST]), model_format)
    reader.feed(opening)
    (first,) = reader.pieces()
    assert (first.name, first.arguments) == ("get_forecast", "{")
    reader.feed(before_value + "Rio de")
    assert [p.arguments for p in reader.pieces()] == ['"days": 3, "city": "Rio de']  # the integer came whole
    reader.feed(' "Janeiro"' + value_end[:4])  # the start of the closing tag (and XML's newline) waits
    assert [p.arguments for p in reader.pieces()] == [' \\"Janeiro\\"']
    reader.feed(value_end[4:] + call_end)
    reader.finish("stop")
    assert [p.arguments for p in reader.pieces()] == ['"}']


def test_a_call_cut_short_in_a_string_keeps_what_was_written_as_a_json_call_would() -> None:
    output = "<tool_call>\n<function=get_forecast>\n<parameter=city>\nRio de J"
    text, calls, reason = ToolCallReader.read_whole(request(tools=[FORECAST]), output, "length", "qwen3_xml")
    assert (text, reason) == ("", "length")
    assert [(c.function.name, c.function.arguments) for c in calls or []] == [("get_forecast", '{"city": "Rio de J')]
    # a value of another type written in part is not given
    output = "<tool_call>\n<function=get_forecast>\n<parameter=days>\n1"
    _, calls, _ = ToolCallReader.read_whole(request(tools=[FORECAST]), output, "length", "qwen3_xml")
    assert [c.function.arguments for c in calls or []] == ["{"]


def xml_like(rng: random.Random, model_format: str) -> str:
    """An output of calls in an XML-like format, with values of every kind (strings with tags, quotes, newlines and
    a key written twice among them), perhaps written wrong or cut short."""
    values = {"city": ["Rio", '"de" <J>\n', "", "\n\n", "a</param"], "days": ["3", "x"], "where": ['{"a": [1]}', "{"]}
    calls = []
    for _ in range(rng.randint(1, 2)):
        name = rng.choice(["get_forecast", "get_time", "rm_rf"])
        pairs = [(k, rng.choice(values[k])) for k in rng.sample(["city", "days", "where", "city"], rng.randint(0, 4))]
        if model_format == "qwen3_xml":
            body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in pairs)
            calls.append(f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>")
        elif model_format == "glm":
            body = "".join(f"<arg_key>{k}</arg_key>\n<arg_value>{v}</arg_value>\n" for k, v in pairs)
            calls.append(f"<tool_call>{name}\n{body}</tool_call>")
        elif model_format == "minimax":  # keys quoted or not
            quoted = [(rng.choice(['"', ""]), k, v) for k, v in pairs]
            body = "".join(f"<parameter name={q}{k}{q}>{v}</parameter>\n" for q, k, v in quoted)
            calls.append(f'<invoke name="{name}">\n{body}</invoke>\n')
        else:  # DeepSeek's DSML: a string attribute true, false or none, a closing tag perhaps left out
            tag = DSML_FORMATS[model_format].tag
            kinds = [rng.choice([' string="true"', ' string="false"', ""]) for _ in pairs]
            ends = [rng.choice([f"</{tag}parameter>", ""]) for _ in pairs]
            body = "".join(
                f'<{tag}parameter name="{k}"{s}>{v}{e}\n' for (k, v), s, e in zip(pairs, kinds, ends, strict=True)
            )
            calls.append(f'<{tag}invoke name="{name}">\n{body}</{tag}invoke>\n')
    opening = {"minimax": "<minimax:tool_call>\n"} | {f: d.calls + "\n" for f, d in DSML_FORMATS.items()}
    return spoiled(rng, "Let me see.\n" + opening.get(model_format, "") + "".join(calls), 0.2, "<>/=\n x")


def gemma4_like(rng: random.Random) -> str:
    """An output of calls in Gemma 4's notation, with values of every kind (strings with its delimiter's parts,
    braces and quotes, numbers, booleans, nested objects and arrays; keys bare or delimited, one written twice),
    perhaps written wrong or cut short."""
    string = '<|"|>'
    values = [f"{string}Rio {{de}} <J>{string}", f"{string}{string}", "12", "true", "1.5"]
    values.append(f"{{a:[1,{string}x{string}]}}")
    calls = []
    for _ in range(rng.randint(1, 2)):
        name = rng.choice(["get_forecast", "get_time", "rm_rf"])
        keys = rng.sample(["city", "days", "where", "city"], rng.randint(0, 4))
        pairs = ",".join(f"{rng.choice([k, string + k + string])}:{rng.choice(values)}" for k in keys)
        calls.append(f"<|tool_call>call:{name}{{{pairs}}}<tool_call|>")
    return spoiled(rng, "Let me see." + "".join(calls), 0.2, '<>|":,{}[] x')


@pytest.mark.parametrize("model_format", ["qwen3_xml", "glm", "minimax", "gemma4", "deepseek_v32", "deepseek_v41"])
def test_any_output_of_calls_with_text_values_split_anyhow_streams_pieces_that_join_to_what_is_read_whole(
    model_format: str,
) -> None:
    rng = random.Random(11)
    req = request(tools=[FORECAST, TIME])
    streamed_strings = 0
    for _ in range(400):
        output = gemma4_like(rng) if model_format == "gemma4" else xml_like(rng, model_format)
        _, whole, _ = ToolCallReader.read_whole(req, output, "length", model_format)  # type: ignore[arg-type]
        reader = ToolCallReader(req, model_format)  # type: ignore[arg-type]
        cuts = sorted(rng.sample(range(len(output) + 1), min(6, len(output) + 1)))
        chunks = [output[a:b] for a, b in zip([0, *cuts], [*cuts, len(output)], strict=True)]
        assert streamed_calls(reader, chunks, "length") == as_dicts(whole), output
        streamed_strings += any('": "' in c.function.arguments and not c.function.arguments.endswith("}") for c in
                                whole or [])  # fmt: skip
    assert streamed_strings > 20  # calls cut short inside a string value were among them


def deepseek_engine(mode: str):  # type: ignore[no-untyped-def]
    """An engine of a DeepSeek model as vLLM builds it (no chat template; vLLM's tokenizer for ``mode`` encodes its
    chats with DeepSeek's own encoder), with only what rendering and reading need."""
    from types import SimpleNamespace

    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    from vllm.tokenizers import deepseek_v4, deepseek_v32, deepseek_v41

    from services.worker.engine import Engine

    wrap = {
        "deepseek_v32": deepseek_v32.get_deepseek_v32_tokenizer,
        "deepseek_v4": deepseek_v4.get_deepseek_v4_tokenizer,
        "deepseek_v41": deepseek_v41.get_deepseek_v41_tokenizer,
    }[mode]
    engine = Engine.__new__(Engine)
    engine._tokenizer = wrap(
        PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, "[UNK]")))
    )
    engine._llm = SimpleNamespace(model_config=SimpleNamespace(tokenizer_mode=mode))
    engine.config = SimpleNamespace(model_id="deepseek")
    return engine


@pytest.mark.parametrize("mode", ["deepseek_v32", "deepseek_v4", "deepseek_v41"])
def test_deepseeks_encoders_get_the_tools_and_earlier_calls_and_their_dsml_calls_read_back_as_the_same(
    mode: str,
) -> None:
    """DeepSeek V3.2 and V4 have no chat template: vLLM's tokenizer encodes their chats. ferry gives it the tools
    and earlier calls, reads their calls in the DSML the encoder writes, and their thinking in <think> blocks."""
    from services.worker.reasoning import THINK, ReasoningReader
    from services.worker.tool_calls import calls_openings, keeps_special_tokens

    engine = deepseek_engine(mode)
    assert (engine.tool_call_format, engine.think_markers, engine.template_renders_tools) == (mode, THINK, True)
    assert keeps_special_tokens(request(), mode)
    dsml = DSML_FORMATS[mode]
    calls = ToolCall(id="call_1", function=FunctionCall(name="get_forecast", arguments='{"city": "Paris", "days": 3}'))
    chat = [
        ChatMessage(role="user", content="Weather in Paris?"),
        ChatMessage(role="assistant", content="Checking.", tool_calls=[calls, TOOL_CONVERSATION[1].tool_calls[1]]),
        *TOOL_CONVERSATION[2:4],
    ]
    prompt = engine.render_prompt(chat, [FORECAST, TIME], enable_thinking=False)
    assert '"name": "get_forecast"' in prompt  # the tools' schemas, in the encoder's system part
    assert "18 C" in prompt and "14:05" in prompt  # the results
    # the assistant turn's calls, after the instructions' example
    written = prompt[prompt.rindex(dsml.calls) : prompt.rindex(dsml.calls_end) + len(dsml.calls_end)]
    text, read, reason = ToolCallReader.read_whole(request(tools=[FORECAST, TIME]), written, "stop", mode)
    assert (text, reason) == ("", "tool_calls")
    assert named_arguments(read) == [
        ("get_forecast", {"city": "Paris", "days": 3}),
        ("get_time", {}),
    ]
    assert prompt.endswith(THINK.end)  # thinking off: the answer follows a closed block
    thinking = engine.render_prompt(chat[:1], [FORECAST], enable_thinking=True)
    assert thinking.endswith(THINK.start)
    reader = ReasoningReader.for_prompt(thinking, False, THINK)
    assert reader.feed("Look it up.</think>" + dsml.calls) == ("Look it up.", dsml.calls)
    # where the model may call, its calls' opening (any spelling) straight from its thoughts ends them
    opening = calls_openings(mode)[-1]
    reader = ReasoningReader.for_prompt(thinking, False, THINK._replace(answer_starts=calls_openings(mode)))
    assert reader.feed("Look it up." + opening) == ("Look it up.", opening)


@pytest.mark.parametrize("mode", ["deepseek_v32", "deepseek_v4", "deepseek_v41"])
def test_dsml_calls_are_read_whole_and_stream_alike_with_values_as_their_string_attribute_says(mode: str) -> None:
    dsml = DSML_FORMATS[mode]
    tag, end = f"<{dsml.tag}", f"</{dsml.tag}"
    output = (
        f'Let me check.\n\n{dsml.calls}\n{tag}invoke name="get_forecast">\n'
        f'{tag}parameter name="city" string="true">42 "x"</{dsml.tag}parameter>\n'
        f'{tag}parameter name="days" string="false">3{end}parameter>\n'
        f'{tag}parameter name="where">{{"lat": 1}}{end}parameter>\n'  # no string attribute: JSON
        f'{tag}parameter name="note" string="false">not json{end}parameter>\n'  # JSON it is not: the text
        f'{tag}parameter name="limit" string="false">NaN{end}parameter>\n'  # nor is NaN
        f'{tag}parameter name="ratio" string="true">0.5\n'  # left open: it ends where the next begins
        f'{tag}parameter name="exact" string="false">true{end}parameter>\n{end}invoke>\n'
        f'{tag}invoke name="get_time">\n{end}invoke>\n{dsml.calls_end}'
    )
    expected = [
        ("get_forecast", {"city": '42 "x"', "days": 3, "where": {"lat": 1}, "note": "not json", "limit": "NaN",
                          "ratio": "0.5\n",
                          "exact": True}),
        ("get_time", {}),
    ]  # fmt: skip
    assert_read_alike(output, mode, "Let me check.\n\n", expected, request(tools=[WEATHER, TIME, FORECAST]))  # type: ignore[arg-type]
    for text in ("Paris is sunny.", f'{dsml.calls}{tag}invoke name="rm_rf">{end}invoke>', f"{dsml.calls}{tag}inv"):
        assert ToolCallReader.read_whole(request(), text, "stop", mode) == (text, None, "stop")  # type: ignore[arg-type]
    for opening in dsml.other_openings:  # V4's other spellings, as vLLM reads them
        spelled = output.replace(dsml.calls, opening)
        assert_read_alike(spelled, mode, "Let me check.\n\n", expected, request(tools=[WEATHER, TIME, FORECAST]))  # type: ignore[arg-type]


def test_a_dsml_string_streams_as_written_and_other_values_come_whole() -> None:
    reader = ToolCallReader(request(tools=[FORECAST]), "deepseek_v32")
    reader.feed('<｜DSML｜function_calls>\n<｜DSML｜invoke name="get_forecast">\n')
    (first,) = reader.pieces()
    assert (first.name, first.arguments) == ("get_forecast", "{")
    reader.feed('<｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>\n')
    reader.feed('<｜DSML｜parameter name="city" string="true">Rio de')
    assert [p.arguments for p in reader.pieces()] == ['"days": 3, "city": "Rio de']  # the integer came whole
    reader.feed(" Janeiro</｜DSML｜para")  # the start of the closing tag waits
    assert [p.arguments for p in reader.pieces()] == [" Janeiro"]
    reader.feed("meter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>")
    reader.finish("stop")
    assert [p.arguments for p in reader.pieces()] == ['"}']


def test_messages_a_models_chat_format_refuses_are_the_clients_error() -> None:
    from services.worker.engine import InvalidRequest

    engine = deepseek_engine("deepseek_v32")
    with pytest.raises(InvalidRequest) as refused:  # a tool result with no call before it
        engine.render_prompt([ChatMessage(role="user", content="Hi"), TOOL_CONVERSATION[2]], [WEATHER])
    assert refused.value.param == "messages" and "deepseek" in str(refused.value)
