"""The review queue against the real PostgreSQL and Kafka: CSRF protection of the review UI's forms (over HTTP), the
sweep that expires held items past their deadline (the requester is told through Kafka), the purge of retained
text at the end of its retention, and policy edits reaching the stage as soon as the ingress sees them. Each test uses
a database and topics of its own."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.ingress.adapters import TenantDirectory
from services.ingress.tenants import Tenant
from services.safety.config import SafetySettings
from services.safety.metrics import SafetyMetrics
from services.safety.policy import DEFAULT_POLICY, CategoryRule
from services.safety.store import PolicyStore, ReviewStore, UserStore
from services.safety.sweeps import Sweeper
from services.safety.web import ReviewDeps, install_error_pages, router
from shared.contracts import ChatMessage, CompletionRequested, ContentFlagged, Message, reply_event_adapter, utc_now
from shared.db import scratch_database
from shared.kafka import delete_topics, ensure_topics
from shared.settings import CommonSettings


@dataclass
class Queue:
    pool: asyncpg.Pool
    common: CommonSettings
    reviews: ReviewStore
    policies: PolicyStore
    users: UserStore
    producer: AIOKafkaProducer
    reply_topic: str

    async def send(self, message: Message, topic: str, request_id: str) -> None:
        await self.producer.send_and_wait(topic, message.model_dump_json().encode(), key=request_id.encode())

    def sweeper(self) -> Sweeper:
        return Sweeper(
            self.reviews, self.policies, self.send, self.common.topics.screened, SafetyMetrics(CollectorRegistry())
        )

    async def read(self, topic: str, request_id: str, seconds: float = 10) -> list[bytes]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=self.common.kafka_bootstrap, group_id=None, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            polled = await consumer.getmany(timeout_ms=int(seconds * 1000))
            return [r.value for rs in polled.values() for r in rs if r.key == request_id.encode()]
        finally:
            await consumer.stop()


@pytest.fixture
async def queue() -> AsyncIterator[Queue]:
    run = uuid.uuid4().hex[:8]
    common = CommonSettings(topic_prefix=f"ferrytest-s{run}.", otel_exporter="none")
    reply_topic = common.topics.replies("safety-it")
    await ensure_topics(common, [reply_topic, common.topics.screened("m")], partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=common.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        async with scratch_database(common.postgres_dsn, "ferry_test_safety") as pool:
            yield Queue(pool, common, ReviewStore(pool), PolicyStore(pool), UserStore(pool), producer, reply_topic)
    finally:
        await producer.stop()
        await delete_topics(common)


def flagged(
    queue: Queue, action: str = "hold", ago: timedelta = timedelta(0), tenant: str = "acme", **extra: object
) -> ContentFlagged:
    request_id = f"r-{uuid.uuid4().hex[:8]}"
    request = CompletionRequested(
        request_id=request_id,
        model="m",
        messages=[ChatMessage(role="user", content="mail jane@example.com")],
        reply_topic=queue.reply_topic,
        tenant_id=tenant,
    )
    return ContentFlagged(
        request_id=request_id,
        tenant_id=tenant,
        model="m",
        stage="prompt",
        action=action,  # type: ignore[arg-type]
        categories=["pii"],
        scores={"pii": 1.0},
        snippet="mail [EMAIL]",
        reply_topic=queue.reply_topic,
        held_request=request if action == "hold" else None,
        flagged_at=utc_now() - ago,
        **extra,  # type: ignore[arg-type]
    )


async def status_of(queue: Queue, item_id: int) -> str:
    return str(await queue.pool.fetchval("SELECT status FROM safety_review_items WHERE id = $1", item_id))


def csrf_in(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "the page's form carries no CSRF token"
    return match.group(1)


def review_ui(queue: Queue) -> httpx.AsyncClient:
    """A client of the review UI, served in process on the queue's stores."""
    app = FastAPI()
    app.include_router(router)
    install_error_pages(app)
    app.state.review = ReviewDeps(
        SafetySettings(), queue.users, queue.reviews, queue.send, queue.common.topics.screened
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://review.test")


async def test_review_ui_refuses_form_posts_without_the_csrf_token(queue: Queue) -> None:
    await queue.users.add("rita", "reviewer-pass-1", "reviewer", False, actor="test")
    item_id = (await queue.reviews.add(flagged(queue), review_minutes=60)).item_id
    assert item_id is not None
    credentials = {"username": "rita", "password": "reviewer-pass-1"}
    async with review_ui(queue) as web:
        login_page = (await web.get("/review/login")).text
        assert (await web.post("/review/login", data=credentials)).status_code == 403  # no token
        refused = await web.post("/review/login", data=credentials | {"csrf_token": "forged"})
        assert refused.status_code == 403 and "CSRF" in refused.text
        signed_in = await web.post("/review/login", data=credentials | {"csrf_token": csrf_in(login_page)})
        assert signed_in.status_code == 303

        # signed in: a cross-site form post carries the session cookie but cannot know the token
        assert (await web.post(f"/review/items/{item_id}/claim")).status_code == 403
        assert (await web.post(f"/review/items/{item_id}/claim", data={"csrf_token": "forged"})).status_code == 403
        assert await status_of(queue, item_id) == "pending"
        token = csrf_in((await web.get(f"/review/items/{item_id}")).text)
        assert csrf_in(login_page) != token  # the session's token, not the sign-in form's
        assert (await web.post(f"/review/items/{item_id}/claim", data={"csrf_token": token})).status_code == 303
        assert await status_of(queue, item_id) == "claimed"
        decided = await web.post(f"/review/items/{item_id}/decide", data={"verdict": "reject"})
        assert decided.status_code == 403 and await status_of(queue, item_id) == "claimed"
        assert (await web.post("/review/logout")).status_code == 403
        assert (await web.get("/review/")).status_code == 200  # still signed in


async def test_held_item_past_its_deadline_is_withheld_with_the_reason_and_marked_expired(queue: Queue) -> None:
    overdue = flagged(queue, ago=timedelta(minutes=61))
    on_time = flagged(queue)
    released_then_reviewed = flagged(queue, action="release", ago=timedelta(minutes=61))
    ids = [(await queue.reviews.add(f, review_minutes=60)).item_id for f in (overdue, on_time, released_then_reviewed)]
    assert None not in ids

    assert await queue.sweeper().sweep() == (1, 0)

    assert [await status_of(queue, i) for i in ids] == ["expired", "pending", "pending"]  # type: ignore[arg-type]
    (reply,) = await queue.read(queue.reply_topic, overdue.request_id)
    event = reply_event_adapter.validate_json(reply)
    assert event.event == "generation_failed" and event.code == "content_blocked"
    assert "review deadline" in event.message
    audit = [(a["actor"], a["action"], a["detail"]) for a in await queue.reviews.audit(ids[0])]
    assert ("system", "expired", {"applied": "withhold", "deadline": audit[1][2]["deadline"]}) in audit
    assert ("system", "withheld", {"reason": "review deadline passed"}) in audit
    assert await queue.pool.fetchval("SELECT held FROM safety_review_items WHERE id = $1", ids[0]) is None
    assert ids[0] not in [i["id"] for i in await queue.reviews.queue()]
    assert await queue.sweeper().sweep() == (0, 0)  # done once


async def test_tenant_policy_can_release_held_items_at_their_deadline(queue: Queue) -> None:
    await queue.policies.put("lenient", DEFAULT_POLICY.model_copy(update={"on_review_expiry": "release"}))
    overdue = flagged(queue, ago=timedelta(minutes=61), tenant="lenient")
    item_id = (await queue.reviews.add(overdue, review_minutes=60)).item_id
    assert item_id is not None

    assert await queue.sweeper().sweep() == (1, 0)

    (forwarded,) = await queue.read(queue.common.topics.screened("m"), overdue.request_id)
    assert CompletionRequested.model_validate_json(forwarded).request_id == overdue.request_id
    assert await queue.read(queue.reply_topic, overdue.request_id, seconds=1) == []
    actions = [a["action"] for a in await queue.reviews.audit(item_id)]
    assert actions == ["flagged", "expired", "released"]


def choices_of(first: ContentFlagged, n: int) -> list[ContentFlagged]:
    """The flags of the n choices of ``first``'s request (ids <id>-<i>), all flagged alike."""
    parent = first.request_id
    flags = []
    for i in range(n):
        rid = f"{parent}-{i}"
        held = (
            first.held_request.model_copy(update={"request_id": rid, "choice_of": parent})
            if first.held_request
            else None
        )
        flags.append(first.model_copy(update={"request_id": rid, "choice_of": parent, "held_request": held}))
    return flags


async def test_the_choices_of_one_request_are_one_review_item_released_together(queue: Queue) -> None:
    await queue.policies.put("lenient", DEFAULT_POLICY.model_copy(update={"on_review_expiry": "release"}))
    first, second, third = choices_of(flagged(queue, ago=timedelta(minutes=61), tenant="lenient"), 3)
    filed = [await queue.reviews.add(f, review_minutes=60) for f in (first, second, third, second)]
    item_id = filed[0].item_id
    assert filed[0].new and item_id is not None
    assert [(f.item_id, f.new) for f in filed[1:3]] == [(item_id, False), (item_id, False)]
    assert filed[3].item_id is None  # a redelivered choice is not held twice
    (listed,) = [i for i in await queue.reviews.queue() if i["id"] == item_id]
    assert listed["choices"] == 3

    assert await queue.sweeper().sweep() == (1, 0)  # one item, so one expiry, released by the tenant's policy

    for choice in (first, second, third):
        (forwarded,) = await queue.read(queue.common.topics.screened("m"), choice.request_id)
        assert CompletionRequested.model_validate_json(forwarded).request_id == choice.request_id
    actions = [a["action"] for a in await queue.reviews.audit(item_id)]
    assert actions == ["flagged", "choice_joined", "choice_joined", "expired", "released"]


async def test_a_held_choice_flagged_after_its_item_was_settled_gets_the_outcome_at_once(queue: Queue) -> None:
    first, late = choices_of(flagged(queue), 2)
    item_id = (await queue.reviews.add(first, review_minutes=60)).item_id
    assert item_id is not None
    await queue.users.add("rita", "reviewer-pass-1", "reviewer", False, actor="test")
    assert await queue.reviews.claim(item_id, "rita")

    async def refuse(item: dict) -> tuple[list[str], str | None]:
        return ["pii"], "withheld"

    assert await queue.reviews.decide(item_id, "rita", "reject", "", refuse)
    settled: list[dict] = []

    async def failing(item: dict) -> None:
        raise ConnectionError("Kafka is down")

    with pytest.raises(ConnectionError):  # the outcome could not be sent: the choice is not recorded
        await queue.reviews.add(late, review_minutes=60, settle=failing)

    async def settle(item: dict) -> None:
        settled.append(item)

    filed = await queue.reviews.add(late, review_minutes=60, settle=settle)
    assert (filed.item_id, filed.new, filed.settled) == (item_id, False, True)
    assert [(i["id"], i["decision"]) for i in settled] == [(item_id, "reject")]
    assert (await queue.reviews.add(late, review_minutes=60, settle=settle)).item_id is None  # once
    assert len(settled) == 1


async def test_choices_flagged_differently_are_not_one_item(queue: Queue) -> None:
    held, released = choices_of(flagged(queue), 2)
    released = released.model_copy(update={"action": "release", "held_request": None})
    ids = [(await queue.reviews.add(f, review_minutes=60)).item_id for f in (held, released)]
    assert None not in ids and ids[0] != ids[1]


async def test_retained_text_is_erased_when_its_retention_ends(queue: Queue) -> None:
    old = flagged(queue, action="release", ago=timedelta(days=2), text="mail jane@example.com", retention_days=1)
    recent = flagged(queue, action="release", text="mail jane@example.com", retention_days=1)
    unstated = flagged(queue, action="release", ago=timedelta(days=2), text="mail jane@example.com")
    nothing_kept = flagged(queue, action="release", text="mail jane@example.com", retention_days=0)
    ids = [
        (await queue.reviews.add(f, review_minutes=60 * 24 * 7)).item_id for f in (old, recent, unstated, nothing_kept)
    ]

    assert await queue.sweeper().sweep() == (0, 1)

    rows = {
        r["id"]: r
        for r in await queue.pool.fetch(
            "SELECT id, text, snippet, scores, text_expires_at FROM safety_review_items WHERE id = ANY($1)", ids
        )
    }
    assert rows[ids[0]]["text"] is None and rows[ids[0]]["snippet"] == "mail [EMAIL]"  # scores and snippet stay
    assert rows[ids[0]]["scores"] is not None
    assert rows[ids[1]]["text"] == "mail jane@example.com"
    assert rows[ids[2]]["text"] == "mail jane@example.com"  # without retention_days: the 30-day default
    assert rows[ids[2]]["text_expires_at"] > utc_now() + timedelta(days=27)
    assert rows[ids[3]]["text"] is None  # retention 0: never stored
    assert [a["action"] for a in await queue.reviews.audit(ids[0])] == ["flagged", "text_purged"]
    assert await queue.sweeper().sweep() == (0, 0)


async def test_a_policy_edit_the_ingress_has_seen_is_applied_by_the_stage_at_once(queue: Queue) -> None:
    """The ingress keys its response cache by the digest of the tenant's policy; a request carrying a digest the stage
    does not hold makes it read the policy again, so an answer is never cached under a policy it was not judged by."""
    directory = TenantDirectory(queue.pool)
    await directory.upsert_tenant(Tenant(id="acme", retention_days=30))
    default_tenant = await directory.tenant("acme")
    assert default_tenant is not None and default_tenant.screening_policy is None  # no row: the built-in default

    await queue.policies.put("*", DEFAULT_POLICY)
    stage = PolicyStore(queue.pool, ttl_s=60)  # the stage's own, with a cache that outlives this test
    assert await stage.get("acme") == DEFAULT_POLICY
    by_default = await directory.tenant("acme")
    assert by_default is not None and by_default.screening_policy is not None

    strict = DEFAULT_POLICY.model_copy(update={"prompt": DEFAULT_POLICY.prompt | {"pii": CategoryRule(block_at=0.5)}})
    await PolicyStore(queue.pool).put("acme", strict)  # the admin command, in another process
    edited = await directory.tenant("acme")
    assert edited is not None and edited.screening_policy not in (None, by_default.screening_policy)

    assert await stage.get("acme") == DEFAULT_POLICY  # still within its cache period
    assert await stage.get("acme", by_default.screening_policy) == DEFAULT_POLICY  # the digest it holds: no read
    assert await stage.get("acme", edited.screening_policy) == strict  # a newer digest: read at once
    assert await stage.get("acme") == strict


async def test_a_held_prompt_holding_u0000_is_filed_and_released_unchanged(queue: Queue) -> None:
    """PostgreSQL's text and jsonb refuse U+0000, which JSON (so a Kafka request) may carry: the review item is
    stored all the same, and the request released at its deadline is the one that was held, U+0000 included."""
    await queue.policies.put("lenient", DEFAULT_POLICY.model_copy(update={"on_review_expiry": "release"}))
    held = flagged(queue, ago=timedelta(minutes=61), tenant="lenient", text="mail\x00 jane@example.com")
    request_id = held.request_id  # ids cannot hold U+0000: the contract refuses such a request (unit tests)
    assert held.held_request is not None
    message = ChatMessage(role="user", content="mail\x00 jane@example.com")
    held = held.model_copy(
        update={
            "snippet": "mail\x00 [EMAIL]",
            "held_request": held.held_request.model_copy(update={"messages": [message]}),
        }
    )
    filed = await queue.reviews.add(held, review_minutes=60)
    assert filed.new and filed.item_id is not None
    assert (await queue.reviews.add(held, review_minutes=60)).item_id is None  # a redelivery is still filed once
    item = await queue.reviews.get(filed.item_id)
    assert item is not None and item["text"] == "mail\ufffd jane@example.com"  # shown with U+FFFD in its place

    assert await queue.sweeper().sweep() == (1, 0)

    (forwarded,) = await queue.read(queue.common.topics.screened("m"), request_id)
    released = CompletionRequested.model_validate_json(forwarded)
    assert released.request_id == request_id and released.messages == [message]


async def test_review_ui_form_fields_holding_u0000_are_a_clear_refusal_or_kept_visibly(queue: Queue) -> None:
    await queue.users.add("rita", "reviewer-pass-1", "reviewer", False, actor="test")
    item_id = (await queue.reviews.add(flagged(queue, action="release"), review_minutes=60)).item_id
    async with review_ui(queue) as web:
        token = {"csrf_token": csrf_in((await web.get("/review/login")).text)}
        refused = await web.post("/review/login", data={"username": "rita\x00", "password": "x"} | token)
        assert refused.status_code == 400 and "U+0000" in refused.text
        signed_in = await web.post("/review/login", data={"username": "rita", "password": "reviewer-pass-1"} | token)
        assert signed_in.status_code == 303
        token = {"csrf_token": csrf_in((await web.get(f"/review/items/{item_id}")).text)}
        assert (await web.post(f"/review/items/{item_id}/claim", data=token)).status_code == 303
        decision = {"verdict": "approve", "note": "fine\x00 by me"} | token
        assert (await web.post(f"/review/items/{item_id}/decide", data=decision)).status_code == 303
    note = await queue.pool.fetchval("SELECT note FROM safety_review_items WHERE id = $1", item_id)
    assert note == "fine\ufffd by me"  # U+FFFD where the reviewer's U+0000 was
