"""OpenAI's moderation API on the platform's safety stage: POST /v1/moderations through the real ingress, Kafka and the
safety service's classifiers, as OpenAI's own client calls it, and the same request produced straight to Kafka."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import httpx
import openai
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.safety.policy import DEFAULT_POLICY, CategoryRule
from services.safety.store import PolicyStore
from tests.e2e.platform import Platform
from tests.e2e.test_batches import ended, jsonl, keeper, lines_of
from tests.e2e.test_kafka_api import read_until_final

BENIGN = "What a lovely day for a picnic in the park with my family."
VIOLENT = "I am going to stab my neighbour to death with a kitchen knife tonight."
WITH_EMAIL = "Please write to me at grace.hopper@example.com about the invoice."


def client(platform: Platform, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{platform.base_url}/v1", api_key=key or platform.api_key, max_retries=0)


def test_each_text_gets_its_own_judgement_in_openais_shape(platform: Platform) -> None:
    marker = uuid.uuid4().hex
    moderation = client(platform).moderations.create(input=[BENIGN, VIOLENT, f"{WITH_EMAIL} {marker}"])

    assert moderation.id.startswith("modr-") and moderation.model == "ferry-screening"
    benign, violent, email = moderation.results
    assert not benign.flagged and benign.categories.violence is False and benign.categories.hate is False
    assert violent.flagged and violent.categories.violence is True
    assert violent.category_scores.violence > benign.category_scores.violence
    # the rules find the address for certain; the default policy releases it for a later look, so it is flagged
    assert email.flagged and email.model_extra is not None
    ferry_own = email.categories.model_extra or {}  # the stage's categories that OpenAI's model has not
    assert {c: ferry_own.get(c) for c in ("deny_list", "pii", "secrets")} == {
        "deny_list": False,
        "pii": True,
        "secrets": False,
    }
    assert email.category_scores.model_extra is not None and email.category_scores.model_extra["pii"] == 1.0
    assert email.model_extra["action"] == "release"
    # OpenAI's categories nothing here screens are neither true nor false
    assert benign.categories.sexual is None and benign.category_scores.harassment is None
    assert benign.category_applied_input_types.sexual == [] and benign.category_applied_input_types.hate == ["text"]
    # the text is never logged, by the ingress or by the safety stage
    assert marker not in platform.log("ingress") and marker not in platform.log("safety")


async def test_the_tenants_own_prompt_policy_judges_the_texts(platform: Platform) -> None:
    tenant = f"moderated-{uuid.uuid4().hex[:8]}"
    pool = await asyncpg.create_pool(platform.common.postgres_dsn, min_size=1, max_size=1)
    try:
        strict = dict(DEFAULT_POLICY.prompt) | {"pii": CategoryRule(block_at=0.5)}
        await PolicyStore(pool).put(tenant, DEFAULT_POLICY.model_copy(update={"prompt": strict}))
    finally:
        await pool.close()
    key = platform.new_tenant(tenant)

    async with httpx.AsyncClient(base_url=platform.base_url, timeout=30) as http:
        answered = await http.post(
            "/v1/moderations", json={"input": WITH_EMAIL}, headers={"authorization": f"Bearer {key}"}
        )
    assert answered.status_code == 200, answered.text
    (result,) = answered.json()["results"]
    assert result["flagged"] and result["action"] == "block" and result["categories"]["pii"] is True
    assert answered.headers["x-request-id"] == answered.json()["id"]


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        (
            {"input": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]},
            "input.0.type",
            "image_url",
        ),
        ({"input": "hello", "model": "omni-moderation-latest"}, "model", "ferry-screening"),
        ({"input": []}, "input", "at least 1"),
        ({"input": ["word " * 3000, "word " * 3500]}, "input", "32000"),
        ({"input": ["a"] * 129}, "input", "at most 128"),
    ],
)
def test_bad_moderation_input_gets_a_400_naming_the_field(
    platform: Platform, body: dict[str, object], param: str, says: str
) -> None:
    answered = httpx.post(
        f"{platform.base_url}/v1/moderations",
        json=body,
        headers={"authorization": f"Bearer {platform.api_key}"},
        timeout=30,
    )
    assert answered.status_code == 400, answered.text
    error = answered.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and says in error["message"]


async def test_a_moderation_produced_to_kafka_is_answered_and_a_bad_one_dead_lettered(platform: Platform) -> None:
    common = platform.common
    bootstrap = common.kafka_bootstrap
    reply_topic = common.topics.replies(f"moderation-client-{uuid.uuid4().hex[:6]}")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(reply_topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    replies = AIOKafkaConsumer(reply_topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    dead_letter = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await producer.start()
    await replies.start()
    await dead_letter.start()
    try:
        dead_letter.assign([TopicPartition(common.topics.dead_letter, 0)])
        await dead_letter.seek_to_end()
        bad_id, good_id = f"bad-{uuid.uuid4().hex}", f"good-{uuid.uuid4().hex}"
        bad = {"request_id": bad_id, "inputs": [], "reply_topic": reply_topic}  # nothing to judge
        good = {"request_id": good_id, "inputs": [BENIGN, VIOLENT], "reply_topic": reply_topic}
        for request in (bad, good):
            await producer.send_and_wait(
                common.topics.moderations, json.dumps(request).encode(), key=request["request_id"].encode()
            )

        (refused,) = await read_until_final(replies, bad_id)
        assert refused["event"] == "generation_failed" and refused["code"] == "invalid_request"
        assert refused["param"] == "inputs"
        (answer,) = await read_until_final(replies, good_id)
        assert answer["event"] == "moderation_completed"
        benign, violent = answer["results"]
        assert not benign["flagged"] and benign["action"] == "allow"
        assert violent["flagged"] and "violence" in violent["categories"]
        async with asyncio.timeout(30):
            async for record in dead_letter:
                letter = json.loads(record.value)
                if letter["key"] == bad_id:
                    break
        assert letter["source_topic"] == common.topics.moderations and "inputs" in letter["reason"]
    finally:
        await producer.stop()
        await replies.stop()
        await dead_letter.stop()


def test_a_batch_of_moderations_answers_each_line(platform: Platform) -> None:
    openai = keeper(platform, "batches-moderations")
    requests = [
        {"custom_id": "benign", "method": "POST", "url": "/v1/moderations", "body": {"input": BENIGN}},
        {"custom_id": "violent", "method": "POST", "url": "/v1/moderations", "body": {"input": [VIOLENT]}},
        {"custom_id": "other-model", "method": "POST", "url": "/v1/moderations", "body": {"input": "hi", "model": "x"}},
    ]
    upload = openai.files.create(file=("moderations.jsonl", jsonl(*requests)), purpose="batch")
    batch = openai.batches.create(input_file_id=upload.id, endpoint="/v1/moderations", completion_window="24h")
    done = ended(openai, batch.id, timeout_s=120)
    assert done.status == "completed" and done.request_counts is not None, done
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    output = lines_of(openai, done.output_file_id)
    assert [r["flagged"] for r in output["benign"]["response"]["body"]["results"]] == [False]
    assert [r["flagged"] for r in output["violent"]["response"]["body"]["results"]] == [True]
    refused = lines_of(openai, done.error_file_id)["other-model"]["response"]
    assert refused["status_code"] == 400 and refused["body"]["error"]["param"] == "model"
