"""Flow control at the ingress: a client that leaves or a deadline that passes cancels the work; a backlog longer than
the deadline is refused at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from shared.contracts import QueueDepthReported, ReplyEvent, RequestCancelled, reply_event_adapter
from tests.e2e.platform import DEFAULT_MODEL, TINY_MODEL, Platform, start_extra_ingress, stop_service

# ignore_eos: the model itself may end its story in a dozen tokens (it is sampled), before a test can leave or time out
LONG = {
    "model": DEFAULT_MODEL,
    "messages": [{"role": "user", "content": "Tell me a long story."}],
    "max_tokens": 1500,
    "ignore_eos": True,
}


async def cancellations(
    platform: Platform, until: Callable[[RequestCancelled], bool] | None = None
) -> list[RequestCancelled]:
    """Every RequestCancelled on the topic so far, or (with ``until``) up to the first one that matches."""
    consumer = AIOKafkaConsumer(bootstrap_servers=platform.common.kafka_bootstrap, group_id=None)
    await consumer.start()
    seen: list[RequestCancelled] = []
    try:
        tp = TopicPartition(platform.common.topics.cancellations, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning()
        end = (await consumer.end_offsets([tp]))[tp]
        async with asyncio.timeout(20):
            while until is not None or await consumer.position(tp) < end:
                record = await consumer.getone()
                seen.append(RequestCancelled.model_validate_json(record.value))
                if until is not None and until(seen[-1]):
                    break
    finally:
        await consumer.stop()
    return seen


async def cancellation_of(platform: Platform, request_id: str) -> RequestCancelled:
    return (await cancellations(platform, lambda c: c.request_id == request_id))[-1]


# the same long answer asked on the Responses API (ignore_eos: vLLM's option, passed on)
LONG_RESPONSE = {
    "model": DEFAULT_MODEL,
    "input": "Tell me a long story.",
    "max_output_tokens": 1500,
    "ignore_eos": True,
}


@pytest.mark.parametrize(
    ("route", "body", "flowing"),
    [
        ("/v1/chat/completions", LONG, '"content":"'),
        ("/v1/responses", LONG_RESPONSE, '"type":"response.output_text.delta"'),
    ],
)
async def test_a_client_leaving_mid_stream_cancels_its_request(
    platform: Platform, route: str, body: dict, flowing: str
) -> None:
    """The work stops, and the tenant's quota counts what it used until then: not the 1,500 tokens it was charged
    at admission."""
    tenant = f"leaving-{route.rsplit('/', 1)[-1]}"
    auth = {"authorization": f"Bearer {platform.new_tenant(tenant)}"}
    async with httpx.AsyncClient(base_url=platform.base_url, headers=auth, timeout=60) as client:
        async with client.stream("POST", route, json=body | {"stream": True}) as response:
            assert response.status_code == 200
            request_id = response.headers["x-request-id"]
            async for line in response.aiter_lines():
                if flowing in line and '"content":""' not in line:
                    break  # tokens are flowing: leave
    cancelled = await cancellation_of(platform, request_id)
    assert cancelled.reason == "client_disconnected" and cancelled.model == DEFAULT_MODEL
    # the worker aborted it: its last reply is a `cancelled` failure, long before max_tokens were generated
    events = await replies_of(platform, request_id)
    assert events[-1].event == "generation_failed" and events[-1].code == "cancelled", events[-1]
    assert not any(e.event == "completion_finished" for e in events)
    generated = sum(e.token_count for e in events if e.event == "tokens_generated")
    assert generated < LONG["max_tokens"] / 4, generated
    # its prompt's estimate (a few tokens) and at least the one delta the client read, at most what was generated
    counted = await platform.tokens_counted(tenant)
    assert 1 < counted <= generated + PROMPT_ESTIMATE_AT_MOST, (counted, generated)


PROMPT_ESTIMATE_AT_MOST = 16
"""More than the estimate of LONG's prompt ("Tell me a long story.": its characters / 4)."""


async def test_the_charges_of_requests_cut_off_by_their_instance_s_death_are_refunded(platform: Platform) -> None:
    """An ingress killed (SIGKILL) mid-stream never settles its requests' charges: each stays open until its
    deadline is past by FERRY_INGRESS_UNSETTLED_REFUND_AFTER_S, then the tenant's quota drops it (any instance)."""
    tenant = "cut-off"
    deadline_s = 15  # long enough that none of the three reaches it before the kill, on a busy machine
    auth = {"authorization": f"Bearer {platform.new_tenant(tenant)}", "x-ferry-timeout": str(deadline_s)}
    extra = start_extra_ingress(platform, "cut-off", {"FERRY_INGRESS_UNSETTLED_REFUND_AFTER_S": "1"})
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{extra.port}", headers=auth, timeout=60) as client:

            async def flowing(stack: contextlib.AsyncExitStack) -> None:
                asked = LONG | {"model": TINY_MODEL, "stream": True}
                response = await stack.enter_async_context(client.stream("POST", "/v1/chat/completions", json=asked))
                assert response.status_code == 200
                lines = response.aiter_lines()
                reading.append(lines)  # (a reader let go would close its stream: the request would end, settled)
                async for line in lines:
                    if '"content":"' in line and '"content":""' not in line:
                        return  # its tokens are flowing

            reading: list[AsyncIterator[str]] = []
            async with contextlib.AsyncExitStack() as streams:
                asked_at = time.monotonic()
                await asyncio.gather(*(flowing(streams) for _ in range(3)))
                assert extra.process is not None
                extra.process.send_signal(signal.SIGKILL)
                extra.process.wait(timeout=60)
                # (the streams end here, cut: nothing settles them)
                assert await platform.tokens_counted(tenant) > 3 * LONG["max_tokens"]  # their estimates, open
    finally:
        stop_service(extra)
    await asyncio.sleep(max(0.0, asked_at + deadline_s + 1 - time.monotonic()))
    assert await platform.tokens_counted(tenant, until=0) == 0


async def replies_of(platform: Platform, request_id: str) -> list[ReplyEvent]:
    """The events a worker sent to the ingress's reply topic for one request, up to its final one."""
    ingress = next(s for s in platform.services if s.name == "ingress")
    topic = platform.common.topics.replies(f"ingress-{ingress.env['FERRY_INGRESS_INSTANCE_ID']}")
    consumer = AIOKafkaConsumer(bootstrap_servers=platform.common.kafka_bootstrap, group_id=None)
    await consumer.start()
    events: list[ReplyEvent] = []
    try:
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.seek_to_beginning()
        async with asyncio.timeout(30):
            async for record in consumer:
                try:
                    event = reply_event_adapter.validate_json(record.value)
                except ValidationError:
                    continue  # other tests park bad records on this topic
                if event.request_id == request_id and event.event != "prompt_cleared":  # the safety stage's
                    events.append(event)
                    if event.event != "tokens_generated":
                        return events
    finally:
        await consumer.stop()
    return events


async def test_a_client_leaving_a_non_streamed_request_cancels_it(platform: Platform) -> None:
    before = {c.request_id for c in await cancellations(platform)}
    async with httpx.AsyncClient(base_url=platform.base_url, headers=platform.auth, timeout=2) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/chat/completions", json=LONG)
    # its id was in the response headers, which never came: it is the one new cancellation
    new = await cancellations(platform, lambda c: c.request_id not in before)
    assert new[-1].reason == "client_disconnected" and new[-1].model == DEFAULT_MODEL


async def test_a_deadline_ends_the_stream_with_an_error_and_cancels_the_work(platform: Platform) -> None:
    """The tenant's quota then counts what the request used until its deadline."""
    auth = {"authorization": f"Bearer {platform.new_tenant('deadline')}"}
    async with httpx.AsyncClient(base_url=platform.base_url, timeout=60) as client:
        response = await client.post(
            "/v1/chat/completions",
            json=LONG | {"stream": True},
            headers=auth | {"x-ferry-timeout": "1.5"},
        )
    assert response.status_code == 200
    events = [e.removeprefix("data: ") for e in response.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "deadline_exceeded"
    cancelled = await cancellation_of(platform, response.headers["x-request-id"])
    assert cancelled.reason == "deadline_exceeded"
    delivered = sum(1 for e in events[:-2] if json.loads(e)["choices"][0]["delta"].get("content"))
    generated = sum(
        e.token_count for e in await replies_of(platform, cancelled.request_id) if e.event == "tokens_generated"
    )
    counted = await platform.tokens_counted("deadline")
    assert delivered <= counted <= generated + PROMPT_ESTIMATE_AT_MOST, (delivered, counted, generated)


async def test_a_backlog_longer_than_the_deadline_is_refused_at_once(platform: Platform) -> None:
    body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

    async def report(wait_s: float) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=platform.common.kafka_bootstrap)
        await producer.start()
        try:
            depth = QueueDepthReported(
                model=TINY_MODEL,
                batcher_id="test-report",
                waiting=500,
                waiting_tokens=50_000,
                expected_wait_seconds=wait_s,
                interval_seconds=30,
            )
            await producer.send_and_wait(platform.common.topics.queue_status, depth.model_dump_json().encode())
        finally:
            await producer.stop()

    async with httpx.AsyncClient(base_url=platform.base_url, headers=platform.auth, timeout=60) as client:
        await report(400)
        for _ in range(50):  # the ingress reads the report asynchronously
            refused = await client.post("/v1/chat/completions", json=body)
            if refused.status_code == 503:
                break
            await asyncio.sleep(0.1)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "model_overloaded"
        assert int(refused.headers["retry-after"]) == 100  # 400 s of backlog minus the default 300 s deadline
        # a client willing to wait longer than the backlog is taken
        patient = await client.post("/v1/chat/completions", json=body, headers={"x-ferry-timeout": "600"})
        assert patient.status_code == 200, patient.text
        # other models are not affected
        other = await client.post("/v1/chat/completions", json=body | {"model": DEFAULT_MODEL})
        assert other.status_code == 200
        await report(0)
        for _ in range(50):
            accepted = await client.post("/v1/chat/completions", json=body)
            if accepted.status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert accepted.status_code == 200
