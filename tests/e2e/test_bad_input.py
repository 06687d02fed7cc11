"""Bad input gets a clear error and never a 500; bad Kafka records are dead-lettered and the platform keeps serving."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.e2e.platform import TINY_MODEL, Platform

GOOD = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def post(platform: Platform, body: object, raw: bytes | None = None) -> httpx.Response:
    url = f"{platform.base_url}/v1/chat/completions"
    if raw is not None:
        return httpx.post(url, content=raw, headers={"content-type": "application/json"} | platform.auth, timeout=30)
    return httpx.post(url, json=body, headers=platform.auth, timeout=30)


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"]
    if param is not None:
        assert error["param"] == param
    return error


def test_malformed_json_is_a_400(platform: Platform) -> None:
    error = assert_openai_error(post(platform, None, raw=b'{"model": "tiny-random", "messages": ['), 400)
    assert error["type"] == "invalid_request_error"
    # JSON that Python's reader refuses other than by its syntax: named, not "There was an error parsing the body"
    deep = b'{"model": "tiny-random", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    error = assert_openai_error(post(platform, None, raw=deep), 400)
    assert error["code"] == "invalid_json" and "nests deeper" in error["message"], error
    huge = b'{"model": "tiny-random", "messages": [], "max_tokens": 1' + b"0" * 5000 + b"}"
    error = assert_openai_error(post(platform, None, raw=huge), 400)
    assert error["code"] == "invalid_json" and "4300" in error["message"], error


def test_a_lone_surrogate_in_the_text_is_a_400_naming_where_not_a_503(platform: Platform) -> None:
    """Python's JSON reader takes a lone surrogate escape into a string, which no Kafka record can hold: the request
    got 503 queue_unavailable ("try again") before, which no retry could mend."""
    raw = b'{"model": "tiny-random", "max_tokens": 4, "messages": [{"role": "user", "content": "hi \\ud800"}]}'
    error = assert_openai_error(post(platform, None, raw=raw), 400, param="messages.0.content")
    assert error["code"] == "invalid_value" and "lone UTF-16 surrogate" in error["message"]
    whole = b'{"model": "tiny-random", "max_tokens": 4, "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    assert post(platform, None, raw=whole).status_code == 200  # a pair is one character


def test_unknown_model_is_a_404_naming_the_model(platform: Platform) -> None:
    error = assert_openai_error(post(platform, GOOD | {"model": "gpt-9"}), 404, param="model")
    assert error["code"] == "model_not_found" and "gpt-9" in error["message"]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"messages": None}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"model": 42}, "model"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),  # OpenAI's limit is 128
        ({"seed": -159809401058587190493184}, "seed"),  # beyond torch's 64 bits: it failed in the engine, as a 503
        ({"seed": 2**63}, "seed"),
    ],
)
def test_missing_empty_or_wrong_typed_fields_are_400_naming_the_field(
    platform: Platform, change: dict, param: str
) -> None:
    body = {k: v for k, v in (GOOD | change).items() if v is not None}
    assert_openai_error(post(platform, body), 400, param=param)


def test_body_that_is_not_an_object_is_a_400(platform: Platform) -> None:
    error = assert_openai_error(post(platform, None, raw=b"[1, 2, 3]"), 400)
    assert error["code"] == "invalid_json" and "JSON object" in error["message"]


def test_json_sent_without_its_content_type_is_a_400_saying_so(platform: Platform) -> None:
    url = f"{platform.base_url}/v1/chat/completions"
    for content_type in ({"content-type": "text/plain"}, {}):  # curl -d without -H sends form-urlencoded; none here
        refused = httpx.post(url, content=json.dumps(GOOD), headers=content_type | platform.auth, timeout=30)
        error = assert_openai_error(refused, 400)
        assert error["code"] == "invalid_json" and "Content-Type: application/json" in error["message"]


def test_unknown_route_is_an_openai_format_404(platform: Platform) -> None:
    missing = assert_openai_error(httpx.get(f"{platform.base_url}/v1/engines", headers=platform.auth, timeout=10), 404)
    assert missing["message"] == "Invalid URL (GET /v1/engines)"  # OpenAI's words
    unserved = httpx.post(f"{platform.base_url}/v1/embeddings", headers=platform.auth, json={}, timeout=10)
    assert assert_openai_error(unserved, 404)["message"] == "Invalid URL (POST /v1/embeddings)"
    wrong_method = httpx.put(f"{platform.base_url}/v1/chat/completions", headers=platform.auth, json={}, timeout=10)
    assert assert_openai_error(wrong_method, 405)["message"] == "Invalid URL (PUT /v1/chat/completions)"


def test_models_come_from_the_registry(platform: Platform) -> None:
    models = httpx.get(f"{platform.base_url}/v1/models", headers=platform.auth, timeout=10).json()
    assert models["object"] == "list"
    assert {m["id"] for m in models["data"]} == {"smollm2-135m-instruct", TINY_MODEL}


def bad_records(platform: Platform, consumer: str) -> tuple[str, dict[bytes, str]]:
    """A topic each consumer reads, and records it must park, with the reason each must give."""
    topics = platform.common.topics
    if consumer in ("safety", "batcher"):  # the safety stage reads requests, the batcher what the stage forwards
        topic = topics.requests(TINY_MODEL) if consumer == "safety" else topics.screened(TINY_MODEL)
        return topic, {
            b"{this is not json": "invalid CompletionRequested",
            json.dumps(
                {"request_id": "x", "model": TINY_MODEL, "reply_topic": "r"}
            ).encode(): "exactly one of messages",
            json.dumps(
                {
                    "request_id": "s",
                    "model": TINY_MODEL,
                    "reply_topic": "r",
                    "prompt": "hi",
                    "sampling": {"seed": 2**64, "response_format": {"type": "json_schema"}},
                }
            ).encode(): "sampling.seed",
            json.dumps(
                {
                    "request_id": f"wrong-{uuid.uuid4().hex}",
                    "model": "smollm2-135m-instruct",
                    "reply_topic": "nowhere",
                    "messages": [{"role": "user", "content": "hi"}],
                }
            ).encode(): "does not match topic",
            json.dumps(  # a name Kafka refuses: no reply could ever reach the requester
                {"request_id": "t", "model": TINY_MODEL, "reply_topic": "replies for me", "prompt": "hi"}
            ).encode(): "reply_topic: String should match pattern",
            json.dumps(  # PostgreSQL refuses U+0000: the stage's policy lookup failed at each redelivery, for ever
                {"request_id": "u", "model": TINY_MODEL, "reply_topic": "r", "prompt": "hi", "tenant_id": "a\x00"}
            ).encode(): "tenant_id: Value error, holds the character U+0000",
        }
    if consumer == "review":  # the safety service's review queue, fed by the stage and the workers
        flagged = {"request_id": "f\x00", "model": TINY_MODEL, "stage": "prompt", "action": "release",
                   "categories": ["pii"], "scores": {"pii": 1.0}, "snippet": "s", "reply_topic": "r"}  # fmt: skip
        return topics.safety_flagged, {
            b"[]": "invalid ContentFlagged",
            json.dumps(flagged).encode(): "request_id: Value error, holds the character U+0000",
        }
    if consumer == "worker":
        return topics.batches(TINY_MODEL), {
            b"\x00\x01binary": "invalid BatchFormed",
            json.dumps({"batch_id": "b", "model": TINY_MODEL, "requests": []}).encode(): "requests: List should have",
        }
    ingress = next(s for s in platform.services if s.name == "ingress")
    return topics.replies(f"ingress-{ingress.env['FERRY_INGRESS_INSTANCE_ID']}"), {
        json.dumps({"event": "tokens_exploded", "request_id": "r"}).encode(): "invalid reply event",
    }


@pytest.mark.parametrize("consumer", ["safety", "batcher", "worker", "ingress", "review"])
async def test_malformed_kafka_records_are_dead_lettered_and_serving_continues(
    platform: Platform, consumer: str
) -> None:
    topic, records = bad_records(platform, consumer)
    producer = AIOKafkaProducer(bootstrap_servers=platform.common.kafka_bootstrap)
    await producer.start()
    try:
        sent = {}
        for value, reason in records.items():
            meta = await producer.send_and_wait(topic, value, key=uuid.uuid4().hex.encode())
            sent[(meta.partition, meta.offset)] = reason
    finally:
        await producer.stop()

    dead_letter = AIOKafkaConsumer(bootstrap_servers=platform.common.kafka_bootstrap, group_id=None)
    await dead_letter.start()
    parked = {}
    try:
        dead_letter.assign([TopicPartition(platform.common.topics.dead_letter, 0)])
        await dead_letter.seek_to_beginning()
        async with asyncio.timeout(30):
            async for record in dead_letter:
                letter = json.loads(record.value)
                if letter["source_topic"] == topic:
                    parked[(letter["partition"], letter["offset"])] = letter
                if set(sent) <= set(parked):
                    break
    finally:
        await dead_letter.stop()

    for position, reason in sent.items():
        assert reason in parked[position]["reason"], parked[position]
        assert parked[position]["service"] == ("safety" if consumer == "review" else consumer)
    # the consumer kept serving: a good request after the bad ones completes
    response = await asyncio.to_thread(post, platform, GOOD)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_prompt_longer_than_the_context_is_a_400_from_the_worker(platform: Platform) -> None:
    long_prompt = " ".join(["serendipitous"] * 3000)  # several tokens each with the tiny tokenizer: > 2048
    body = GOOD | {"messages": [{"role": "user", "content": long_prompt}]}
    error = assert_openai_error(post(platform, body), 400)
    assert error["code"] == "context_length_exceeded" and "2048" in error["message"]


def test_a_prompt_too_large_for_kafka_is_a_413_and_the_platform_keeps_serving(platform: Platform) -> None:
    huge = "word " * 300_000  # 1.5 MB: more than a Kafka record may hold
    body = GOOD | {"messages": [{"role": "user", "content": huge}]}
    error = assert_openai_error(post(platform, body), 413, param="messages")
    assert error["code"] == "request_too_large" and error["type"] == "invalid_request_error"
    assert post(platform, GOOD).status_code == 200


def test_a_body_past_the_ingress_limit_is_a_413_before_it_is_read(platform: Platform) -> None:
    """Past FERRY_INGRESS_MAX_BODY_BYTES (8 MiB) a body is refused unread, whether its Content-Length says so or it
    comes in chunks without one; FastAPI would read and parse it whole first."""
    huge = json.dumps(GOOD | {"messages": [{"role": "user", "content": "word " * 2_000_000}]}).encode()  # 10 MB
    declared = post(platform, None, raw=huge)
    error = assert_openai_error(declared, 413)
    assert error["code"] == "request_too_large" and "8388608 bytes" in error["message"], error

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(huge), 1 << 20):
            yield huge[start : start + (1 << 20)]

    url = f"{platform.base_url}/v1/chat/completions"
    headers = {"content-type": "application/json"} | platform.auth
    chunked = httpx.post(url, content=chunks(), headers=headers, timeout=30)  # no Content-Length: sent in chunks
    error = assert_openai_error(chunked, 413)
    assert error["code"] == "request_too_large", error
    assert post(platform, GOOD).status_code == 200
