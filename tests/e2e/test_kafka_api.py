"""Internal systems talk to the platform through Kafka alone: produce a request, read the reply on their own topic.
The request is written as plain JSON, as a non-Python producer would, to hold the documented format to its word."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from transformers import AutoTokenizer

from shared.settings import consumer_group
from tests.e2e.platform import DEFAULT_MODEL, MODELS_DIR, TINY_MODEL, Platform
from tests.e2e.test_reasoning import ANSWER, BUDGET

BLOCKED_PROMPT = (
    "Is my key sk-proj-ZyXwVuTsRqPoNmLkJiHgFeDcBa9876543210 still valid?"  # the safety stage blocks secrets
)


async def read_until_final(consumer: AIOKafkaConsumer, request_id: str, seconds: float = 60) -> list[dict]:
    events: list[dict] = []
    async with asyncio.timeout(seconds):
        async for record in consumer:
            event = json.loads(record.value)
            if event.get("request_id") != request_id:
                continue
            events.append(event)
            if event["event"] in ("completion_finished", "generation_failed", "moderation_completed"):
                return events
    return events


async def produce_and_read(platform: Platform, request: dict) -> list[dict]:
    """Produces ``request`` (its reply_topic is created first, as documented: the requester owns it) and reads its
    reply events until the final one."""
    bootstrap = platform.common.kafka_bootstrap
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(request["reply_topic"], num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(
        request["reply_topic"], bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await producer.start()
    await consumer.start()
    try:
        topic = platform.common.topics.requests(request["model"])
        await producer.send_and_wait(topic, json.dumps(request).encode(), key=request["request_id"].encode())
        return await read_until_final(consumer, request["request_id"])
    finally:
        await producer.stop()
        await consumer.stop()


async def test_request_produced_to_kafka_gets_its_completion_on_its_own_reply_topic(platform: Platform) -> None:
    request_id = f"billing-{uuid.uuid4().hex}"
    request = {
        "schema_version": 1,
        "request_id": request_id,
        "model": TINY_MODEL,
        "messages": [{"role": "user", "content": "Summarise invoice 42."}],
        "sampling": {"max_tokens": 12, "temperature": 0},
        "stream": True,
        "reply_topic": platform.common.topics.replies(f"billing-system-{uuid.uuid4().hex[:6]}"),
    }
    events = await produce_and_read(platform, request)

    assert events, "no reply arrived"
    final = events[-1]
    assert final["event"] == "completion_finished", final
    deltas = [e for e in events if e["event"] == "tokens_generated"]
    assert [e["sequence"] for e in events] == list(range(len(events)))
    assert "".join(d["text"] for d in deltas) == final["text"]
    assert final["usage"]["completion_tokens"] == sum(d["token_count"] for d in deltas) > 0
    assert final["usage"]["total_tokens"] == final["usage"]["prompt_tokens"] + final["usage"]["completion_tokens"]


async def test_a_prompt_of_token_ids_is_completed_and_its_replies_carry_the_decoded_text(platform: Platform) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(MODELS_DIR / TINY_MODEL))
    ids = tokenizer.encode("Summarise invoice 45.", add_special_tokens=False)
    request = {
        "request_id": f"ids-{uuid.uuid4().hex}",
        "model": TINY_MODEL,
        "prompt_token_ids": ids,
        "sampling": {"max_tokens": 4, "temperature": 0},
        "reply_topic": platform.common.topics.replies(f"ids-system-{uuid.uuid4().hex[:6]}"),
    }
    events = await produce_and_read(platform, request)
    final = events[-1]
    assert final["event"] == "completion_finished", final
    assert final["prompt_text"] == tokenizer.decode(ids) and final["usage"]["prompt_tokens"] == len(ids)
    assert events[0]["prompt_text"] == final["prompt_text"]  # the first delta carries it too, for a streamed echo


async def test_a_request_the_contract_refuses_is_answered_on_its_reply_topic_with_the_reason(
    platform: Platform,
) -> None:
    """Besides its dead letter for operators, a refused request whose id and reply topic can be read is answered with
    generation_failed, so its producer learns why at once instead of waiting for an answer that never comes."""
    request_id = f"refused-{uuid.uuid4().hex}"
    request = {
        "request_id": request_id,
        "model": TINY_MODEL,
        "messages": [{"role": "user", "content": "Summarise invoice 44."}],
        "sampling": {"max_tokens": 12, "logprobs": 100},
        "reply_topic": platform.common.topics.replies(f"billing-system-{uuid.uuid4().hex[:6]}"),
    }
    events = await produce_and_read(platform, request)

    assert len(events) == 1, events
    (failure,) = events
    assert failure["event"] == "generation_failed" and failure["code"] == "invalid_request", failure
    assert failure["param"] == "sampling.logprobs" and "less than or equal to 20" in failure["message"], failure
    assert failure["retryable"] is False


async def test_a_tool_call_produced_to_kafka_streams_as_pieces_of_the_call_never_as_text(
    platform: Platform,
) -> None:
    request_id = f"agent-{uuid.uuid4().hex}"
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    request = {
        "request_id": request_id,
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [{"name": "get_weather", "description": "The weather in a city.", "parameters": parameters}],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "sampling": {"max_tokens": 60, "temperature": 0},
        "reply_topic": platform.common.topics.replies(f"agent-system-{uuid.uuid4().hex[:6]}"),
    }
    events = await produce_and_read(platform, request)

    final = events[-1]
    assert final["event"] == "completion_finished", final
    assert final["finish_reason"] == "tool_calls" and final["text"] == ""
    (call,) = final["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"])["city"], str)
    deltas = [e for e in events if e["event"] == "tokens_generated"]
    assert "".join(d["text"] for d in deltas) == ""  # the call's JSON never streams as text
    assert sum(d["token_count"] for d in deltas) == final["usage"]["completion_tokens"]  # its tokens are counted
    # it streams as pieces of the call instead, which add up to it
    pieces = [p for d in deltas for p in d["tool_calls"]]
    assert {(p["index"], p["id"], p["name"]) for p in pieces} == {(0, call["id"], "get_weather")}
    assert [p["arguments_offset"] for p in pieces] == [
        sum(len(q["arguments"]) for q in pieces[:i]) for i in range(len(pieces))
    ]
    assert "".join(p["arguments"] for p in pieces) == call["function"]["arguments"]


async def test_a_reasoning_model_s_thinking_streams_apart_on_kafka_with_offsets_that_add_up(platform: Platform) -> None:
    request_id = f"research-{uuid.uuid4().hex}"
    request = {
        "request_id": request_id,
        "model": TINY_MODEL,  # a reasoning model: it thinks (within a budget), then answers as a regex says
        "messages": [{"role": "user", "content": "What is two plus two?"}],
        "enable_thinking": True,
        "thinking_token_budget": BUDGET,
        "sampling": {"max_tokens": 60, "seed": 1, "structured_outputs": {"regex": ANSWER}},
        "reply_topic": platform.common.topics.replies(f"research-system-{uuid.uuid4().hex[:6]}"),
    }
    events = await produce_and_read(platform, request)

    final = events[-1]
    assert final["event"] == "completion_finished", final
    assert final["reasoning"] and final["text"] and "think>" not in final["reasoning"] + final["text"]
    assert 0 < final["usage"]["reasoning_tokens"] < final["usage"]["completion_tokens"]
    deltas = [e for e in events if e["event"] == "tokens_generated"]
    assert [d["reasoning_offset"] for d in deltas] == [
        sum(len(e["reasoning"]) for e in deltas[:i]) for i in range(len(deltas))
    ]
    assert "".join(d["reasoning"] for d in deltas) == final["reasoning"]
    assert "".join(d["text"] for d in deltas) == final["text"]
    assert sum(d["token_count"] for d in deltas) == final["usage"]["completion_tokens"]


@pytest.mark.parametrize("service", ["worker", "safety"])
async def test_a_request_whose_reply_topic_kafka_will_not_create_is_dead_lettered_and_the_work_after_it_goes_on(
    platform: Platform, service: str
) -> None:
    """A reply topic that is missing and that the brokers will not create (here its name collides with an existing
    topic's; likewise where brokers create no topic on first use). The service that must answer first (the worker; the
    safety stage for a prompt it blocks) waits FERRY_REPLY_TOPIC_WAIT_S (10 s) for the topic, then parks the request
    on the dead-letter topic with the reason, and goes on: the worker generates nothing for it and commits its batch
    (left uncommitted, it held back the commits of every later batch of its partition), and a request produced right
    after it is answered. aiokafka's own wait, which the services took before, was 40 s, twice in the worker."""
    common = platform.common
    bootstrap = common.kafka_bootstrap
    request_id = f"unanswerable-{uuid.uuid4().hex}"
    request = {
        "request_id": request_id,
        "model": TINY_MODEL,
        "messages": [{"role": "user", "content": BLOCKED_PROMPT if service == "safety" else "Summarise invoice 43."}],
        "sampling": {"max_tokens": 12, "temperature": 0},
        "reply_topic": common.topics.dead_letter.replace(".", "_"),  # Kafka: collides with the dead-letter topic
    }
    dead_letter = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await dead_letter.start()
    await producer.start()
    await admin.start()
    try:
        dead_letter.assign([TopicPartition(common.topics.dead_letter, 0)])
        await dead_letter.seek_to_end()
        topic = common.topics.requests(TINY_MODEL)
        await producer.send_and_wait(topic, json.dumps(request).encode(), key=request_id.encode())
        next_request = {
            "request_id": f"after-{request_id}",
            "model": TINY_MODEL,
            "messages": [{"role": "user", "content": "Summarise invoice 44."}],
            "sampling": {"max_tokens": 4, "temperature": 0},
            "reply_topic": common.topics.replies(f"after-unanswerable-{uuid.uuid4().hex[:6]}"),
        }
        following = asyncio.create_task(produce_and_read(platform, next_request))
        async with asyncio.timeout(30):  # 10 s of waiting for the topic; the 40 s wait before failed here
            async for record in dead_letter:
                letter = json.loads(record.value)
                if letter["key"] == request_id:
                    break
        assert letter["service"] == service, letter
        assert f"its reply topic {request['reply_topic']!r} cannot be written" in letter["reason"], letter
        assert "not in Kafka's metadata after 10 s" in letter["reason"], letter
        assert json.loads(letter["payload"])["request_id"] == request_id
        assert (await following)[-1]["event"] == "completion_finished"
        if service == "safety":
            assert letter["source_topic"] == topic
            return
        assert letter["source_topic"] == common.topics.batches(TINY_MODEL)
        batch = TopicPartition(letter["source_topic"], letter["partition"])
        group = consumer_group("worker.", common.topic_prefix) + TINY_MODEL
        async with asyncio.timeout(30):
            while True:
                committed = await admin.list_consumer_group_offsets(group, partitions=[batch])
                if batch in committed and committed[batch].offset > letter["offset"]:
                    break
                await asyncio.sleep(0.2)
    finally:
        await dead_letter.stop()
        await producer.stop()
        await admin.close()
    assert f"request {request_id} finished" not in platform.log(f"worker-{TINY_MODEL}")  # nothing was generated
