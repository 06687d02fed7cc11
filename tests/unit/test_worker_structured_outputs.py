"""What the worker asks of vLLM's grammar-guided decoding for a response format or a structured output
(services/worker/engine.py)."""

from __future__ import annotations

import json

import pytest
import xgrammar

from services.worker.engine import JSON_WHITESPACE_LIMIT, _structured_outputs
from shared.contracts import ResponseFormat, SamplingParams, StructuredOutputs


def _formatted(response_format: ResponseFormat) -> SamplingParams:
    return SamplingParams(response_format=response_format)


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "address": {"type": "object", "properties": {"city": {"type": "string"}}},
        "tags": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
        "extra": {"type": "object", "properties": {"x": {"type": "integer"}}, "additionalProperties": True},
    },
    "required": ["name"],
}


def accepts(grammar: str | None, text: str) -> bool:
    assert grammar is not None
    return xgrammar.testing._is_grammar_accept_string(xgrammar.Grammar.from_ebnf(grammar), text)


def test_strict_closes_every_object_that_does_not_say_otherwise() -> None:
    params = _structured_outputs(_formatted(ResponseFormat(type="json_schema", json_schema=SCHEMA, strict=True)))
    assert params is not None and params.json is None
    assert accepts(params.grammar, '{"name": "a", "address": {"city": "b"}, "tags": [{"k": "c"}], "extra": {"y": 1}}')
    assert not accepts(params.grammar, '{"name": "a", "other": 1}')
    assert not accepts(params.grammar, '{"name": "a", "address": {"street": "b"}}')
    assert not accepts(params.grammar, '{"name": "a", "tags": [{"j": "c"}]}')
    assert "additionalProperties" not in SCHEMA  # the request's own schema is left as it came


def test_without_strict_the_schema_goes_as_written() -> None:
    params = _structured_outputs(_formatted(ResponseFormat(type="json_schema", json_schema=SCHEMA)))
    assert params is not None and accepts(params.grammar, '{"name": "a"}')
    assert not accepts(params.grammar, '{"address": {}}')  # name is required
    json_object = _structured_outputs(_formatted(ResponseFormat(type="json_object")))
    assert json_object is not None and accepts(json_object.grammar, '{"any": ["thing", 1]}')
    assert not accepts(json_object.grammar, "[1]")


def test_json_answers_may_be_laid_out_on_lines_but_not_run_on_in_white_space() -> None:
    """vLLM would let the model write new lines without end (its issue 38696): measured here, 3 answers of 8 did."""
    for response_format in (ResponseFormat(type="json_schema", json_schema=SCHEMA), ResponseFormat(type="json_object")):
        params = _structured_outputs(_formatted(response_format))
        assert params is not None
        assert accepts(params.grammar, json.dumps({"name": "a", "address": {"city": "b"}}, indent=2))
        assert accepts(params.grammar, '{"name":"a"}')
        assert accepts(params.grammar, '{"name"' + " " * JSON_WHITESPACE_LIMIT + ': "a"}')
        assert not accepts(params.grammar, '{"name"' + "\n" * (JSON_WHITESPACE_LIMIT + 1) + ': "a"}')
        assert accepts(params.grammar, '{"name": "' + "\\n" * 100 + '"}')  # a string holds any text


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},  # xgrammar lacks it: llguidance takes it
        {"type": "integer", "minimum": 5, "maximum": 2},  # no JSON satisfies it: vLLM refuses it in its own words
        {"type": "array", "items": json.loads("[" * 70 + "]" * 70)},  # nested deeper than vLLM takes
    ],
)
def test_a_schema_xgrammar_does_not_take_goes_to_the_engine_as_written(schema: dict) -> None:
    params = _structured_outputs(_formatted(ResponseFormat(type="json_schema", json_schema=schema)))
    assert params is not None and params.json == schema and params.grammar is None


def test_a_choice_a_regex_or_a_grammar_goes_to_the_engine_as_given_and_nothing_is_free_text() -> None:
    for form in ({"choice": ["yes", "no"]}, {"regex": r"\d{3}"}, {"grammar": 'root ::= "a"'}):
        params = _structured_outputs(SamplingParams(structured_outputs=StructuredOutputs.model_validate(form)))
        assert params is not None
        assert {k: getattr(params, k) for k in form} == form
        assert params.json is None and params.json_object is None
    assert _structured_outputs(SamplingParams()) is None
