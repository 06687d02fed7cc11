"""What the worker asks of vLLM's grammar-guided decoding for a response format (services/worker/engine.py)."""

from __future__ import annotations

from services.worker.engine import _structured_outputs
from shared.contracts import ResponseFormat

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
    params = _structured_outputs(ResponseFormat(type="json_schema", json_schema=SCHEMA, strict=True))
    assert params is not None and isinstance(params.json, dict)
    closed = params.json
    assert closed["additionalProperties"] is False
    assert closed["properties"]["address"]["additionalProperties"] is False
    assert closed["properties"]["tags"]["items"]["additionalProperties"] is False
    assert closed["properties"]["extra"]["additionalProperties"] is True  # the schema said so
    assert "additionalProperties" not in SCHEMA  # the request's own schema is left as it came


def test_without_strict_the_schema_goes_as_written() -> None:
    params = _structured_outputs(ResponseFormat(type="json_schema", json_schema=SCHEMA))
    assert params is not None and params.json == SCHEMA
    json_object = _structured_outputs(ResponseFormat(type="json_object"))
    assert json_object is not None and json_object.json_object
