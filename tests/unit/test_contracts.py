from __future__ import annotations

import json

import pytest
from aiokafka import ConsumerRecord

from shared.contracts import CompletionRequested, PromptCleared, TokensGenerated, reply_event_adapter
from shared.kafka import Rejected, decode, requester_of
from shared.topics import Topics


def record(value: bytes | None) -> ConsumerRecord:
    return ConsumerRecord(
        topic="t",
        partition=0,
        offset=7,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=0,
        headers=(),
    )


MINIMAL = {
    "request_id": "r1",
    "model": "m",
    "reply_topic": "replies.x",
    "messages": [{"role": "user", "content": "hi"}],
}


def test_minimal_documented_request_gets_defaults() -> None:
    req = decode(CompletionRequested, record(json.dumps(MINIMAL).encode()))
    assert req.schema_version == 1 and req.stream is True and req.sampling.max_tokens == 256


def test_any_name_kafka_takes_is_a_reply_topic() -> None:
    for name in ("billing.replies", "Team_A-replies.v2", "r" * 249):
        assert (
            decode(CompletionRequested, record(json.dumps(MINIMAL | {"reply_topic": name}).encode())).reply_topic
            == name
        )


def test_readers_tolerate_fields_added_by_newer_writers() -> None:
    req = decode(CompletionRequested, record(json.dumps(MINIMAL | {"priority": "batch"}).encode()))
    assert req.request_id == "r1"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty record value"),
        (b"{not json", "invalid CompletionRequested: body: Invalid JSON"),
        (json.dumps({k: v for k, v in MINIMAL.items() if k != "messages"}).encode(), "exactly one of messages"),
        (json.dumps(MINIMAL | {"messages": []}).encode(), "exactly one of messages"),
        (json.dumps(MINIMAL | {"prompt": "Once upon a time"}).encode(), "exactly one of messages"),
        (json.dumps(MINIMAL | {"sampling": {"response_format": {"type": "yaml"}}}).encode(), "response_format"),
        (
            json.dumps(MINIMAL | {"sampling": {"response_format": {"type": "json_schema"}}}).encode(),
            "json_schema is required with type json_schema",
        ),
        (
            json.dumps(
                MINIMAL | {"sampling": {"response_format": {"type": "json_object", "json_schema": {"type": "object"}}}}
            ).encode(),
            "not allowed with json_object",
        ),
        (json.dumps(MINIMAL | {"sampling": {"logit_bias": {"-1": 5}}}).encode(), "logit_bias.-1.[key]"),
        (json.dumps(MINIMAL | {"sampling": {"logit_bias": {"7": 101}}}).encode(), "logit_bias.7"),
        (json.dumps(MINIMAL | {"sampling": {"max_tokens": 4, "min_tokens": 5}}).encode(), "is more than max_tokens"),
        (
            json.dumps(MINIMAL | {"sampling": {"structured_outputs": {"choice": ["a"], "regex": "a"}}}).encode(),
            "exactly one of choice, regex and grammar",
        ),
        (json.dumps(MINIMAL | {"reply_topic": "my replies"}).encode(), "reply_topic: String should match pattern"),
        (json.dumps(MINIMAL | {"reply_topic": "r" * 250}).encode(), "reply_topic: String should have at most 249"),
    ],
)
def test_undecodable_records_are_rejected_with_a_readable_reason(value: bytes | None, reason: str) -> None:
    with pytest.raises(Rejected) as err:
        decode(CompletionRequested, record(value))
    assert reason in str(err.value)


def test_reply_events_are_told_apart_by_their_event_field() -> None:
    event = reply_event_adapter.validate_json(
        TokensGenerated(request_id="r", sequence=0, text="x", token_count=1).model_dump_json()
    )
    assert isinstance(event, TokensGenerated)
    cleared = reply_event_adapter.validate_json(PromptCleared(request_id="r", by="screening").model_dump_json())
    assert cleared == PromptCleared(request_id="r", by="screening")


def test_a_request_without_prompt_screening_is_screened_before_generation() -> None:
    request = CompletionRequested.model_validate_json(
        '{"request_id": "r", "model": "m", "prompt": "hi", "reply_topic": "t"}'
    )  # what an internal producer that predates the field sends
    assert request.prompt_screening == "before"


def test_topic_names_are_prefixed_and_kafka_safe() -> None:
    topics = Topics("p.")
    assert topics.requests("org/model:v1") == "p.requests.org-model-v1"
    assert topics.batches("m") == "p.batches.m"
    assert topics.dead_letter == "p.dead-letter"


def test_token_estimates_count_the_tools_and_the_calls_a_chat_carries() -> None:
    plain = CompletionRequested.model_validate(MINIMAL | {"messages": [{"role": "user", "content": "abcd"}]})
    assert plain.prompt_chars() == 4
    tool = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    with_tools = CompletionRequested.model_validate(
        MINIMAL
        | {
            "messages": [{"role": "user", "content": "abcd"}, {"role": "assistant", "tool_calls": [call]}],
            "tools": [tool],
        }
    )
    assert with_tools.prompt_chars() > 4 + len('{"city": "Oslo"}') + len(json.dumps(tool["parameters"]))


@pytest.mark.parametrize(
    "fields",
    [
        {"prompt": "x", "messages": [], "tools": [{"name": "f"}]},
        {"tools": [{"name": "f"}], "tool_choice": "required", "tool_choice_function": "g"},
        {"tools": [{"name": "f"}], "tool_choice_function": "f"},  # named needs required
        {"tools": [{"name": "f"}], "sampling": {"logprobs": 1}},
    ],
)
def test_a_request_whose_tools_cannot_be_served_is_invalid(fields: dict) -> None:
    with pytest.raises(ValueError):
        CompletionRequested.model_validate(MINIMAL | {"messages": [{"role": "user", "content": "a"}]} | fields)


def test_a_rejected_record_names_the_field_at_fault() -> None:
    with pytest.raises(Rejected) as err:
        decode(CompletionRequested, record(json.dumps(MINIMAL | {"sampling": {"logprobs": 21}}).encode()))
    assert err.value.param == "sampling.logprobs"


@pytest.mark.parametrize(
    ("field", "value"), [("request_id", "r\x001"), ("tenant_id", "acme\x00"), ("choice_of", "\x00")]
)
def test_a_request_with_u0000_in_an_id_is_rejected_naming_the_field(field: str, value: str) -> None:
    """The services look these up in PostgreSQL, which refuses U+0000: stored, such a request failed at each
    redelivery and held back the requests behind it; now it is dead-lettered with the reason."""
    with pytest.raises(Rejected) as err:
        decode(CompletionRequested, record(json.dumps(MINIMAL | {field: value}).encode()))
    assert err.value.param == field and "U+0000" in str(err.value)


@pytest.mark.parametrize(
    ("value", "requester"),
    [
        (json.dumps(MINIMAL | {"sampling": {"logprobs": 21}}).encode(), ("r1", "replies.x")),
        (json.dumps({"request_id": "r2", "reply_topic": "billing.replies"}).encode(), ("r2", "billing.replies")),
        (b"{not json", None),
        (b"[1, 2]", None),
        (json.dumps({"request_id": "r3"}).encode(), None),
        (json.dumps({"request_id": 7, "reply_topic": "replies.x"}).encode(), None),
        (json.dumps({"request_id": "r" * 201, "reply_topic": "replies.x"}).encode(), None),
        (json.dumps({"request_id": "r4", "reply_topic": "my replies"}).encode(), None),
        (None, None),
    ],
)
def test_the_requester_of_a_rejected_record_is_told_only_when_its_id_and_reply_topic_are_usable(
    value: bytes | None, requester: tuple[str, str] | None
) -> None:
    assert requester_of(record(value)) == requester
