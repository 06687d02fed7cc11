"""JSON output (OpenAI's response_format) through the whole platform: vLLM's grammar-guided decoding keeps SmolLM2 to
JSON, or to a given schema, on both routes, streamed and not; a schema the engine cannot use is a 400 that names
response_format, and the worker goes on serving."""

from __future__ import annotations

import json

import pytest
from openai import BadRequestError

from tests.e2e.platform import DEFAULT_MODEL, Platform
from tests.e2e.test_completions import async_client, sync_client

# a schema SmolLM2 would never answer with unprompted: its keys and values are not in the question
SCHEMA = {
    "type": "object",
    "properties": {
        "ferry_color": {"enum": ["teal", "maroon"]},
        "ferry_count": {"type": "integer", "minimum": 3, "maximum": 5},
    },
    "required": ["ferry_color", "ferry_count"],
    "additionalProperties": False,
}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "ferry_answer", "schema": SCHEMA, "strict": True}}


def matches_schema(text: str) -> bool:
    answer = json.loads(text)
    return (
        set(answer) == {"ferry_color", "ferry_count"}
        and answer["ferry_color"] in ("teal", "maroon")
        and type(answer["ferry_count"]) is int
        and 3 <= answer["ferry_count"] <= 5
    )


def test_json_object_mode_turns_an_answer_wrapped_in_prose_into_a_bare_json_object(platform: Platform) -> None:
    client = sync_client(platform)
    messages = [{"role": "user", "content": "Describe Paris in JSON with keys city and country."}]
    free = client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, max_tokens=80, temperature=0)
    with pytest.raises(json.JSONDecodeError):  # SmolLM2 alone puts the JSON in a Markdown fence, with comments
        json.loads(free.choices[0].message.content or "")
    constrained = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=messages, max_tokens=80, temperature=0, response_format={"type": "json_object"}
    )
    assert constrained.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(constrained.choices[0].message.content or ""), dict)


async def test_a_streamed_chat_answer_matches_the_schema_it_was_given(platform: Platform) -> None:
    stream = await async_client(platform).chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "Give me a color as JSON."}],
        max_tokens=60,
        seed=7,
        stream=True,
        response_format=SCHEMA_FORMAT,  # type: ignore[arg-type]
    )
    pieces, finish = [], []
    async for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish.append(chunk.choices[0].finish_reason)
    assert finish[-1] == "stop"
    assert matches_schema("".join(pieces)), "".join(pieces)


def test_a_plain_completion_takes_a_response_format_too(platform: Platform) -> None:
    completion = sync_client(platform).completions.create(
        model=DEFAULT_MODEL,
        prompt="The capital of France, as a JSON object: ",
        max_tokens=60,
        temperature=0,
        extra_body={"response_format": SCHEMA_FORMAT},  # not in OpenAI's legacy API, as in vLLM's
    )
    assert completion.choices[0].finish_reason == "stop"
    assert matches_schema(completion.choices[0].text), completion.choices[0].text


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "nonsense"}, "Invalid type: nonsense"),
        ({"type": "integer", "minimum": 5, "maximum": 2}, "Unsatisfiable schema"),
        ({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}, "/nowhere"),
    ],
)
def test_a_schema_the_engine_cannot_use_is_a_400_naming_response_format(
    platform: Platform, schema: dict, reason: str
) -> None:
    client = sync_client(platform)
    messages = [{"role": "user", "content": "Give me a color as JSON."}]
    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=20,
            response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": schema}},
        )
    body = err.value.body
    assert body["param"] == "response_format" and body["type"] == "invalid_request_error"  # type: ignore[index]
    assert reason in body["message"]  # type: ignore[index]
    after = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=60,
        temperature=0,
        response_format=SCHEMA_FORMAT,  # type: ignore[arg-type]
    )
    assert matches_schema(after.choices[0].message.content or "")


def test_a_json_schema_format_without_its_schema_is_a_400_before_anything_is_queued(platform: Platform) -> None:
    with pytest.raises(BadRequestError) as err:
        sync_client(platform).chat.completions.create(
            model=DEFAULT_MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            response_format={"type": "json_schema", "json_schema": {"name": "no_schema"}},  # type: ignore[typeddict-item]
        )
    assert err.value.body["param"] == "response_format.json_schema.schema"  # type: ignore[index]


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_an_answer_the_model_would_pad_with_new_lines_still_closes(platform: Platform) -> None:
    """With white space unbounded, as vLLM compiles a schema, SmolLM2 answers these at temperature 0 with a new line
    between every two tokens and then new lines alone until max_tokens: the JSON never closes (vLLM issue 38696).
    ferry bounds white space between tokens (engine.JSON_WHITESPACE_LIMIT), and each answer closes."""
    client = sync_client(platform)
    for question in ("Give a person", "Tell me about a famous scientist", "A person from Paris"):
        answer = client.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=[{"role": "user", "content": question}],
            max_tokens=300,
            temperature=0,
            response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON, "strict": True}},
        )
        text = answer.choices[0].message.content or ""
        assert answer.choices[0].finish_reason == "stop", text
        assert set(json.loads(text)) == {"name", "age"}
        assert "\n" * 21 not in text  # the limit, 20, and one more
