"""Tool calling through the whole platform, with the official client and SmolLM2, whose chat template has no place for
tools (the worker writes them into the system turn, Hermes-style): forced calls are generated under the tools'
schemas; in auto mode the model decides, and its call is read out of its text; a conversation carries calls and their
results back; tools the model could not use are 400s naming the parameter."""

from __future__ import annotations

import json

import jsonschema
import pytest
from openai import BadRequestError, OpenAI
from openai.types.chat import ChatCompletion

from tests.e2e.platform import DEFAULT_MODEL, TINY_MODEL, Platform
from tests.e2e.test_completions import async_client, sync_client

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": WEATHER_PARAMETERS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Get the current time in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
]
QUESTION = [{"role": "user", "content": "What is the weather in Paris right now?"}]


def _call(index: int, city: str) -> dict:
    arguments = json.dumps({"city": city, "unit": "celsius"})
    return {"id": f"call_{index}", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}


# Two earlier turns in which the assistant called the tool: SmolLM2-135M then calls it itself for a third city (greedy)
FEW_SHOT = [
    {"role": "user", "content": "What is the weather in Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [_call(1, "Oslo")]},
    {"role": "user", "content": "What is the weather in London?"},
    {"role": "assistant", "content": None, "tool_calls": [_call(2, "London")]},
    {"role": "user", "content": "What is the weather in Rome?"},
]


def required_call(client: OpenAI, **sampling: object) -> ChatCompletion:
    return client.chat.completions.create(  # type: ignore[call-overload, no-any-return]
        model=DEFAULT_MODEL, messages=QUESTION, tools=TOOLS, tool_choice="required", max_tokens=80, **sampling
    )


def prompt_tokens(client: OpenAI, model: str, tool_choice: str) -> int:
    """The prompt's tokens for QUESTION with TOOLS and ``tool_choice``: longer when the tools are shown."""
    completion = client.chat.completions.create(
        model=model,
        messages=QUESTION,
        tools=TOOLS,
        tool_choice=tool_choice,
        max_tokens=1,  # type: ignore[arg-type]
    )
    assert completion.usage is not None
    return completion.usage.prompt_tokens


def test_a_required_call_is_a_call_of_an_offered_tool_with_arguments_that_match_its_schema(platform: Platform) -> None:
    choice = required_call(sync_client(platform), seed=3).choices[0]  # sampled
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        offered = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
        assert call.type == "function" and call.function.name in offered and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), offered[call.function.name])


async def test_a_named_call_s_arguments_stream_in_pieces_that_join_to_the_unstreamed_call(platform: Platform) -> None:
    asked = {
        "model": DEFAULT_MODEL,
        "messages": QUESTION,
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "max_tokens": 60,
        "temperature": 0,
    }
    client = async_client(platform)
    whole = (await client.chat.completions.create(**asked)).choices[0]  # type: ignore[call-overload]
    assert whole.finish_reason == "stop"  # as OpenAI: a call the request named is not the model's choice to call
    assert whole.message.tool_calls is not None and len(whole.message.tool_calls) == 1
    call = whole.message.tool_calls[0]
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMETERS)

    texts, deltas, finishes = [], [], []
    async for chunk in await client.chat.completions.create(stream=True, **asked):  # type: ignore[call-overload]
        choice = chunk.choices[0]
        texts.append(choice.delta.content or "")
        deltas += choice.delta.tool_calls or []
        finishes.append(choice.finish_reason)
    assert "".join(texts) == ""  # the call's JSON is never streamed as text
    # as OpenAI streams a call: the first delta opens it (id, type, name), the others bring its arguments on
    opening, *rest = deltas
    assert (opening.index, opening.type, opening.function.name) == (0, "function", "get_weather")  # type: ignore[union-attr]
    assert opening.id is not None and opening.id.startswith("call_")  # the request's own (ids derive from its id)
    assert rest and all((d.index, d.id, d.type, d.function.name) == (0, None, None, None) for d in rest)  # type: ignore[union-attr]
    assert "".join(d.function.arguments for d in deltas) == call.function.arguments  # type: ignore[union-attr]
    assert finishes[-1] == "stop"


async def test_in_auto_mode_the_model_decides_to_call_and_its_call_is_read_out_of_its_text(platform: Platform) -> None:
    client = async_client(platform)
    asked = {"model": DEFAULT_MODEL, "messages": FEW_SHOT, "tools": TOOLS, "max_tokens": 60, "temperature": 0}
    choice = (await client.chat.completions.create(**asked)).choices[0]  # type: ignore[call-overload]
    assert choice.finish_reason == "tool_calls", choice.message.content
    assert choice.message.tool_calls is not None
    assert [c.function.name for c in choice.message.tool_calls] == ["get_weather"]
    assert json.loads(choice.message.tool_calls[0].function.arguments)["city"] == "Rome"

    texts, deltas, finishes = [], [], []
    async for chunk in await client.chat.completions.create(stream=True, **asked):  # type: ignore[call-overload]
        texts.append(chunk.choices[0].delta.content or "")
        deltas += chunk.choices[0].delta.tool_calls or []
        finishes.append(chunk.choices[0].finish_reason)
    assert "<tool_call>" not in "".join(texts) and "get_weather" not in "".join(texts)
    assert deltas[0].function.name == "get_weather" and deltas[0].id  # type: ignore[union-attr]
    assert "".join(d.function.arguments for d in deltas) == choice.message.tool_calls[0].function.arguments  # type: ignore[union-attr]
    assert finishes[-1] == "tool_calls"


def test_a_tool_result_goes_back_to_the_model_and_tool_choice_none_gets_text(platform: Platform) -> None:
    client = sync_client(platform)
    assistant = required_call(client, temperature=0).choices[0].message
    assert assistant.tool_calls
    results = [
        {"role": "tool", "tool_call_id": call.id, "content": "It is 18 degrees and sunny."}
        for call in assistant.tool_calls
    ]
    answer = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[*QUESTION, assistant.model_dump(exclude_none=True), *results],  # type: ignore[list-item]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="none",
        max_tokens=40,
        temperature=0,
    )
    assert answer.choices[0].message.tool_calls is None and answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length")
    # the tools were not shown with none: the prompt is shorter than with them
    assert prompt_tokens(client, DEFAULT_MODEL, "none") + 100 < prompt_tokens(client, DEFAULT_MODEL, "auto")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "get_stock_price"}}}, "tool_choice"),
        ({"logprobs": True}, "logprobs"),
        # the engine cannot compile this schema: the worker's refusal names the tools, not a response_format
        (
            {
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}],
                "tool_choice": "required",
            },
            "tools",
        ),
    ],
)
def test_tools_the_model_could_not_use_are_a_400_naming_the_parameter(
    platform: Platform, fields: dict, param: str
) -> None:
    with pytest.raises(BadRequestError) as err:
        sync_client(platform).chat.completions.create(
            model=DEFAULT_MODEL,
            messages=QUESTION,
            max_tokens=20,
            **({"tools": TOOLS} | fields),  # type: ignore[arg-type]
        )
    assert err.value.status_code == 400
    assert err.value.body["param"] == param, err.value.body  # type: ignore[index]


def test_a_model_whose_own_template_renders_tools_is_shown_them(platform: Platform) -> None:
    # tiny-random's chat template renders tools itself (services/worker/model_store.py), so the worker hands them to
    # its template (tests/unit/test_worker_tool_calls.py shows that template writes them as the worker would). Its
    # weights are random: under a forced call's grammar it writes whitespace until max_tokens, so no call is checked.
    client = sync_client(platform)
    assert prompt_tokens(client, TINY_MODEL, "auto") > prompt_tokens(client, TINY_MODEL, "none") + 100


def test_a_tool_result_and_a_tool_description_are_screened_as_prompts_are(platform: Platform) -> None:
    secret = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"  # what the prompt screening blocks (test_safety.py)
    leaky_tool = {"type": "function", "function": {"name": "login", "description": f"Logs in with the key {secret}."}}
    turns = [*QUESTION, {"role": "assistant", "content": None, "tool_calls": [_call(1, "Paris")]}]
    for fields in (
        {"tools": [leaky_tool]},
        {"tools": TOOLS, "messages": [*turns, {"role": "tool", "tool_call_id": "call_1", "content": f"key: {secret}"}]},
    ):
        with pytest.raises(BadRequestError) as err:
            sync_client(platform).chat.completions.create(
                **({"model": TINY_MODEL, "messages": QUESTION, "max_tokens": 4} | fields)  # type: ignore[arg-type]
            )
        assert err.value.body["code"] == "content_policy_violation", err.value.body  # type: ignore[index]
