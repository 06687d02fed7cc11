"""What the worker asks of vLLM's grammar-guided decoding for a response format or a structured output
(services/worker/engine.py)."""

from __future__ import annotations

from services.worker.engine import _structured_outputs
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


def test_strict_closes_every_object_that_does_not_say_otherwise() -> None:
    params = _structured_outputs(_formatted(ResponseFormat(type="json_schema", json_schema=SCHEMA, strict=True)))
    assert params is not None and isinstance(params.json, dict)
    closed = params.json
    assert closed["additionalProperties"] is False
    assert closed["properties"]["address"]["additionalProperties"] is False
    assert closed["properties"]["tags"]["items"]["additionalProperties"] is False
    assert closed["properties"]["extra"]["additionalProperties"] is True  # the schema said so
    assert "additionalProperties" not in SCHEMA  # the request's own schema is left as it came


def test_without_strict_the_schema_goes_as_written() -> None:
    params = _structured_outputs(_formatted(ResponseFormat(type="json_schema", json_schema=SCHEMA)))
    assert params is not None and params.json == SCHEMA
    json_object = _structured_outputs(_formatted(ResponseFormat(type="json_object")))
    assert json_object is not None and json_object.json_object


def test_a_choice_a_regex_or_a_grammar_goes_to_the_engine_as_given_and_nothing_is_free_text() -> None:
    for form in ({"choice": ["yes", "no"]}, {"regex": r"\d{3}"}, {"grammar": 'root ::= "a"'}):
        params = _structured_outputs(SamplingParams(structured_outputs=StructuredOutputs.model_validate(form)))
        assert params is not None
        assert {k: getattr(params, k) for k in form} == form
        assert params.json is None and params.json_object is None
    assert _structured_outputs(SamplingParams()) is None
