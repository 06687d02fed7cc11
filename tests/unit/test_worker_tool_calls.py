"""How a chat with tools is written for the model, and how its calls are read back, streamed or whole."""

from __future__ import annotations

import json

import jsonschema
import pytest

from services.worker.tool_calls import ToolCallReader, call_id, conversation, forced_schema, tool_mode
from shared.contracts import ChatMessage, CompletionRequested, FunctionCall, FunctionTool, ToolCall

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
