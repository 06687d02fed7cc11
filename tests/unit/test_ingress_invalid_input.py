"""The 400 a body that fails validation gets: the parameter as the client wrote it and the fault that applies to what
it sent, for union fields too (a string or a list, a literal or an object), from the request models' real errors."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from starlette.datastructures import FormData

from services.ingress.protocol import ChatCompletionRequest, CompletionRequest, invalid_input, lone_surrogate

CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION: dict[str, Any] = {"model": "m", "prompt": "Once"}


def rejected(model: type[ChatCompletionRequest] | type[CompletionRequest], body: dict[str, Any]) -> tuple[Any, str]:
    with pytest.raises(ValidationError) as raised:
        model.model_validate(body)
    # FastAPI locates body errors under "body"
    errors = [error | {"loc": ("body", *error["loc"])} for error in raised.value.errors()]
    return invalid_input(errors, body)


@pytest.mark.parametrize(
    ("change", "param", "message"),
    [
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "List should have at most 4 items after validation, not 5"),
        ({"stop": ["a", 5]}, "stop.1", "Input should be a valid string"),
        ({"stop": ""}, "stop", "String should have at least 1 character"),
        ({"stop": 5}, "stop", "Input should be a valid string or a valid list"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content", "Input should be a valid string"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]},
            "messages.0.content.0.type",
            "image_url parts are not served: ferry's models read text only",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": 1, "text": "hi"}]}]},
            "messages.0.content.0.type",
            "'text'",
        ),
        ({"tool_choice": "maybe"}, "tool_choice", "Input should be 'none', 'auto' or 'required'"),
        ({"logit_bias": {"x": 1}}, "logit_bias.x", ""),
        ({"temperature": 3}, "temperature", "less than or equal to 2"),
    ],
)
def test_a_bad_chat_field_is_named_as_sent_with_the_fault_that_applies(change: dict, param: str, message: str) -> None:
    got_param, got_message = rejected(ChatCompletionRequest, CHAT | change)
    assert got_param == param
    assert got_message.startswith(f"Invalid value for '{param}': ") and message in got_message


def test_a_missing_field_inside_a_union_member_is_named_as_missing() -> None:
    body = CHAT | {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function"}}
    assert rejected(ChatCompletionRequest, body) == (
        "tool_choice.function",
        "Missing required parameter: 'tool_choice.function'.",
    )
    assert rejected(ChatCompletionRequest, {"messages": CHAT["messages"]}) == (
        "model",
        "Missing required parameter: 'model'.",
    )


@pytest.mark.parametrize(
    ("prompt", "param", "message"),
    [
        (["one"] * 129, "prompt", "List should have at most 128 items after validation, not 129"),
        ([], "prompt", "List should have at least 1 item after validation, not 0"),
        ([[1, 2]] * 129, "prompt", "List should have at most 128 items after validation, not 129"),
        (["one", 2], "prompt.1", "Input should be a valid string"),
        ([1, "two"], "prompt.1", "Input should be a valid integer"),  # the first item says which form it is
        ([[1], [-2]], "prompt.1.0", "Input should be greater than or equal to 0"),
        ([[1], []], "prompt.1", "List should have at least 1 item after validation, not 0"),
        (5, "prompt", "Input should be a string, an array of token ids, or an array of either"),
    ],
)
def test_a_bad_prompt_is_named_with_what_a_prompt_may_be(prompt: Any, param: str, message: str) -> None:
    assert rejected(CompletionRequest, COMPLETION | {"prompt": prompt}) == (
        param,
        f"Invalid value for '{param}': {message}",
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (rb'{"model": "m", "messages": [{"role": "user", "content": "hi \ud800 there"}]}', "messages.0.content"),
        (rb'{"model": "m", "prompt": ["fine", "a\uDC00"]}', "prompt.1"),
        (rb'{"model": "m", "logit_bias": {"\udc00": 1}}', "logit_bias.\\udc00"),
        (
            rb'{"model": "m", "response_format": {"json_schema": {"schema": {"pattern": "\ud83d"}}}}',
            "response_format.json_schema.schema.pattern",
        ),
        (rb'{"model": "m", "messages": [{"role": "user", "content": "\ud83d\ude00 is whole"}]}', None),  # a pair
        (rb'{"model": "m", "messages": [{"role": "user", "content": "the text \\ud800, escaped"}]}', None),
    ],
)
def test_a_lone_surrogate_escape_is_named_where_it_is(body: bytes, param: str | None) -> None:
    found = lone_surrogate(body)
    if param is None:
        assert found is None
        return
    assert found is not None and found[0] == param
    assert "lone UTF-16 surrogate" in found[1] and found[1].encode("utf-8")  # the message itself is valid text


def test_a_missing_body_and_a_bad_query_parameter_are_said_as_such() -> None:
    # as FastAPI reports them: a POST without a body, and ?limit=0 on a list
    assert invalid_input([{"type": "missing", "loc": ("body",), "msg": "Field required"}], None) == (
        None,
        "The request body is missing: send a JSON object.",
    )
    too_small = {
        "type": "greater_than_equal",
        "loc": ("query", "limit"),
        "msg": "Input should be greater than or equal to 1",
    }
    assert invalid_input([too_small], None) == (
        "limit",
        "Invalid value for 'limit': Input should be greater than or equal to 1",
    )


def test_a_form_field_is_named_as_a_body_field_is() -> None:
    form = FormData([("purpose", "fine-tune"), ("expires_after[seconds]", "60")])
    errors = [
        {"type": "greater_than_equal", "loc": ("body", "expires_after[seconds]"), "msg": "Input should be >= 3600"}
    ]
    assert invalid_input(errors, form)[0] == "expires_after[seconds]"
    errors = [{"type": "literal_error", "loc": ("body", "purpose"), "msg": "Input should be 'batch' or 'user_data'"}]
    assert invalid_input(errors, form) == (
        "purpose",
        "Invalid value for 'purpose': Input should be 'batch' or 'user_data'",
    )
