"""Adapters of the ingress: its reply topic and the batchers' queue reports (aiokafka), the request publisher
(FastStream), the model catalog and the tenant directory (PostgreSQL, each with a short cache).

Database calls are bounded in time (shared.outages): a database that does not answer turns into DependencyUnavailable
(a 503 with Retry-After) instead of holding the request, and the last answer read is reused where that is safe."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import datetime

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from faststream.kafka import KafkaBroker
from opentelemetry import trace
from pydantic import ValidationError
from redis.asyncio import Redis

from services.ingress.rate_limits import Charge
from services.ingress.serving import ReleaseGate
from services.ingress.tenants import ADMIN_KEY_PREFIX, NewKey, Tenant, key_digest, new_api_key
from shared.contracts import (
    FINAL_EVENTS,
    CompletionFinished,
    CompletionRequested,
    GenerationFailed,
    ModerationRequested,
    QueueDepthReported,
    ReplyEvent,
    RequestCancelled,
    TokensGenerated,
    reply_event_adapter,
    utc_now,
)
from shared.kafka import (
    broker_producer,
    dead_letter,
    ensure_topics,
    publish_message,
    record_headers,
    tail,
    warm_up_producer,
)
from shared.outages import DATABASE_FAILURES, REDIS_FAILURES, Breaker, DependencyUnavailable, bounded
from shared.registry import ModelRecord, ModelRegistry
from shared.settings import CommonSettings
from shared.telemetry import context_from

logger = logging.getLogger(__name__)


class ReplyListener:
    """Reads this instance's reply topic and routes each event to the request waiting for it.

    Partitions are assigned (not subscribed through a group) and positioned at their end before the instance takes
    requests, so no reply can arrive before the listener looks for it."""

    def __init__(self, common: CommonSettings, topic: str, broker: KafkaBroker, tracer: trace.Tracer) -> None:
        self._common, self.topic, self._broker, self._tracer = common, topic, broker, tracer
        self._queues: dict[str, tuple[asyncio.Queue[ReplyEvent], ReleaseGate]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = await tail(self._common, self.topic, "ferry-ingress-replies")
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="reply-listener")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer:
            await self._consumer.stop()

    def expect(self, request_id: str, deadline_at: datetime, cleared: bool = True) -> AsyncIterator[ReplyEvent]:
        """Registers the request (call it before publishing) and returns its reply events, up to the final one; the
        iterator raises TimeoutError at the deadline. The queue is bound now, not at the first read, so replies that
        arrive before the reader starts are kept. ``cleared=False`` (a prompt screened beside generation) holds the
        output back until the safety stage's PromptCleared arrives."""
        queue: asyncio.Queue[ReplyEvent] = asyncio.Queue()
        self._queues[request_id] = (queue, ReleaseGate(cleared=cleared))
        return self._read(request_id, queue, deadline_at)

    @property
    def waiting(self) -> int:
        """Requests registered and not finished yet."""
        return len(self._queues)

    async def _read(
        self, request_id: str, queue: asyncio.Queue[ReplyEvent], deadline_at: datetime
    ) -> AsyncIterator[ReplyEvent]:
        try:
            while True:
                remaining = (deadline_at - utc_now()).total_seconds()
                if remaining <= 0:
                    raise TimeoutError
                if queue.empty():
                    async with asyncio.timeout(remaining):  # no task per event, as wait_for would start
                        event = await queue.get()
                else:
                    event = queue.get_nowait()
                yield event
                if isinstance(event, FINAL_EVENTS):
                    return
        finally:
            # only its own: a reader closed late (an async generator is finalized when collected) must not drop the
            # queue of a request registered since under the same id
            registered = self._queues.get(request_id)
            if registered is not None and registered[0] is queue:
                del self._queues[request_id]

    def forget(self, request_id: str) -> None:
        self._queues.pop(request_id, None)

    async def position(self) -> int:
        """The offset this listener reads next: every reply sent from now on comes at or after it."""
        assert self._consumer is not None
        return int(await self._consumer.position(TopicPartition(self.topic, 0)))

    async def _run(self) -> None:
        assert self._consumer is not None
        async for record in self._consumer:
            try:
                await self._route(record)
            except Exception:  # one bad record must not stop the replies of every other request
                logger.exception("reply %s[%d]@%d could not be routed", record.topic, record.partition, record.offset)

    async def _route(self, record: ConsumerRecord) -> None:
        try:
            event = reply_event_adapter.validate_json(record.value or b"")
        except ValidationError as exc:
            reason = f"invalid reply event: {exc.errors()[0]['msg']}"
            await dead_letter(self._broker, self._common, record, reason, "ingress")
            return
        waiting = self._queues.get(event.request_id)
        if waiting is None:
            return  # the client is gone, or the event is a redelivery of a finished request
        queue, gate = waiting
        if isinstance(event, TokensGenerated) and event.sequence > 0:
            released = gate.admit(event)  # no span per delta: the first one and the final event mark the stream
        else:
            with self._tracer.start_as_current_span(
                "ferry.ingress.reply",
                context=context_from(record_headers(record)),
                attributes={"ferry.request_id": event.request_id, "ferry.event": event.event},
            ):
                released = gate.admit(event)
        for ready in released:
            queue.put_nowait(ready)
        if any(isinstance(ready, FINAL_EVENTS) for ready in released):
            # the request is done here, even if its reader never resumes (a client gone, a failure raised mid-read)
            self._queues.pop(event.request_id, None)


class RequestPublisher:
    def __init__(self, common: CommonSettings, broker: KafkaBroker) -> None:
        self._common, self._broker = common, broker

    async def publish(self, request: CompletionRequested) -> None:
        """To the model's request topic, where the safety stage screens it; a request screened beside generation
        goes to the model's screened topic (the batcher's) at the same time."""
        topics = self._common.topics
        targets = [topics.requests(request.model)]
        if request.prompt_screening == "beside":
            targets.append(topics.screened(request.model))
        rid = request.request_id
        await asyncio.gather(*(publish_message(self._broker, request, t, key=rid, request_id=rid) for t in targets))

    async def warm_up(self) -> None:
        """Readies the producer for every model's request and screened topics, cancellations and moderations, so the
        first request does not wait for their metadata (see warm_up_producer)."""
        topics = self._common.topics
        models_topics = (topics.requests(""), topics.screened(""))
        others = {topics.cancellations, topics.moderations}
        readied = await warm_up_producer(
            broker_producer(self._broker), lambda t: t.startswith(models_topics) or t in others
        )
        logger.info("producer ready for %d topic(s)", len(readied))

    async def moderate(self, request: ModerationRequested) -> None:
        """To the moderation topic, which the safety stage reads."""
        rid = request.request_id
        await publish_message(self._broker, request, self._common.topics.moderations, key=rid, request_id=rid)

    async def cancel(self, cancelled: RequestCancelled) -> None:
        await publish_message(
            self._broker,
            cancelled,
            self._common.topics.cancellations,
            key=cancelled.request_id,
            request_id=cancelled.request_id,
        )


class QueueMonitor:
    """Keeps the latest QueueDepthReported of every batcher, so the ingress can refuse work it could not serve in
    time without asking anyone on the request path. Reports older than two intervals are ignored."""

    def __init__(self, common: CommonSettings) -> None:
        self._common = common
        self._reports: dict[tuple[str, str], QueueDepthReported] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        topic = self._common.topics.queue_status
        await ensure_topics(self._common, [topic], partitions=1)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._common.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id="ferry-ingress-queue-status",
            auto_offset_reset="latest",
        )
        await consumer.start()
        consumer.assign([TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})])
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="queue-monitor")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer:
            await self._consumer.stop()

    def expected_wait_s(self, model: str) -> float:
        """The longest wait any live batcher expects for ``model`` (a request may land on any of them)."""
        now = utc_now()
        return max(
            (
                r.expected_wait_seconds
                for (m, _), r in self._reports.items()
                if m == model and (now - r.reported_at).total_seconds() <= 2 * r.interval_seconds
            ),
            default=0.0,
        )

    async def _run(self) -> None:
        assert self._consumer is not None
        async for record in self._consumer:
            try:
                report = QueueDepthReported.model_validate_json(record.value or b"")
            except ValidationError:
                logger.warning("ignored an invalid queue report at %s@%d", record.topic, record.offset)
                continue
            self._reports[(report.model, report.batcher_id)] = report


class TenantDirectory:
    """Tenants and API keys in PostgreSQL. Key checks are cached for a few seconds, so a revoked key stops working
    within ``ttl_s`` while the database stays off the hot path. Every call waits at most ``timeout_s`` for the
    database; while it cannot answer, a key checked within the last ``outage_grace_s`` keeps its last verdict (its
    clients keep working through a short outage), and any other call raises DependencyUnavailable."""

    def __init__(
        self, pool: asyncpg.Pool, ttl_s: float = 5.0, timeout_s: float = 2.0, outage_grace_s: float = 300.0
    ) -> None:
        self._pool, self._ttl_s, self._outage_grace_s = pool, ttl_s, outage_grace_s
        self._cache: dict[bytes, tuple[float, Tenant | None]] = {}
        self._database = Breaker("database", timeout_s, max(ttl_s, 1.0), DATABASE_FAILURES)

    async def authenticate(self, secret: str) -> Tenant | None:
        digest = key_digest(secret)
        hit = self._cache.get(digest)
        if hit and time.monotonic() - hit[0] < self._ttl_s:
            return hit[1]
        try:
            row = await self._database.call(
                lambda: self._pool.fetchrow(
                    f"SELECT {_TENANT_COLUMNS} FROM api_keys k JOIN tenants t ON t.id = k.tenant_id"
                    " WHERE k.key_digest = $1 AND k.revoked_at IS NULL",
                    digest,
                )
            )
        except DependencyUnavailable:
            if hit and time.monotonic() - hit[0] < self._outage_grace_s:
                return hit[1]
            raise
        tenant = _tenant(row) if row else None
        if len(self._cache) > 100_000:  # unknown keys must not grow memory without bound
            self._cache.clear()
        self._cache[digest] = (time.monotonic(), tenant)
        return tenant

    async def upsert_tenant(self, tenant: Tenant) -> None:
        await self._database.call(
            lambda: self._pool.execute(
                """INSERT INTO tenants (id, name, requests_per_minute, tokens_per_minute, monthly_token_quota,
                 retention_days, max_priority, default_priority, default_profile, cache_shared_scope, cache_sampled,
                 default_variant)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
               ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name,
                 requests_per_minute = EXCLUDED.requests_per_minute, tokens_per_minute = EXCLUDED.tokens_per_minute,
                 monthly_token_quota = EXCLUDED.monthly_token_quota, retention_days = EXCLUDED.retention_days,
                 max_priority = EXCLUDED.max_priority, default_priority = EXCLUDED.default_priority,
                 default_profile = EXCLUDED.default_profile, cache_shared_scope = EXCLUDED.cache_shared_scope,
                 cache_sampled = EXCLUDED.cache_sampled, default_variant = EXCLUDED.default_variant,
                 updated_at = now()""",
                tenant.id,
                tenant.name,
                tenant.requests_per_minute,
                tenant.tokens_per_minute,
                tenant.monthly_token_quota,
                tenant.retention_days,
                tenant.max_priority,
                tenant.default_priority,
                tenant.default_profile,
                tenant.cache_shared_scope,
                tenant.cache_sampled,
                tenant.default_variant,
            )
        )

    async def tenant(self, tenant_id: str) -> Tenant | None:
        row = await self._database.call(
            lambda: self._pool.fetchrow(f"SELECT {_TENANT_COLUMNS} FROM tenants t WHERE t.id = $1", tenant_id)
        )
        return _tenant(row) if row else None

    async def tenants(self) -> list[Tenant]:
        rows = await self._database.call(
            lambda: self._pool.fetch(f"SELECT {_TENANT_COLUMNS} FROM tenants t ORDER BY t.id")
        )
        return [_tenant(r) for r in rows]

    async def create_key(self, tenant_id: str, name: str = "") -> NewKey:
        key = new_api_key()
        created_at = await self._database.call(
            lambda: self._pool.fetchval(
                "INSERT INTO api_keys (id, tenant_id, name, key_digest, key_prefix) VALUES ($1, $2, $3, $4, $5)"
                " RETURNING created_at",
                key.id,
                tenant_id,
                name,
                key.digest,
                key.prefix,
            )
        )
        return dataclasses.replace(key, created_at=created_at)

    async def keys(self, tenant_id: str | None = None) -> list[asyncpg.Record]:
        return await self._database.call(
            lambda: self._pool.fetch(
                "SELECT id, tenant_id, name, key_prefix, created_at, revoked_at FROM api_keys"
                " WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY created_at",
                tenant_id,
            )
        )

    async def revoke_key(self, key_id: str) -> asyncpg.Record | None:
        """Revokes an active key; the key as it now stands, or None if there was no active key of that id."""
        return await self._database.call(
            lambda: self._pool.fetchrow(
                "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL"
                " RETURNING id, tenant_id, name, key_prefix, created_at, revoked_at",
                key_id,
            )
        )

    async def is_admin(self, secret: str) -> bool:
        """Whether ``secret`` is an active admin key (not cached: admin calls are rare, revocation is immediate)."""
        row = await self._database.call(
            lambda: self._pool.fetchval(
                "SELECT 1 FROM admin_keys WHERE key_digest = $1 AND revoked_at IS NULL", key_digest(secret)
            )
        )
        return row is not None

    async def create_admin_key(self, name: str = "") -> NewKey:
        key = new_api_key(ADMIN_KEY_PREFIX)
        created_at = await self._database.call(
            lambda: self._pool.fetchval(
                "INSERT INTO admin_keys (id, name, key_digest, key_prefix) VALUES ($1, $2, $3, $4)"
                " RETURNING created_at",
                key.id,
                name,
                key.digest,
                key.prefix,
            )
        )
        return dataclasses.replace(key, created_at=created_at)

    async def admin_keys(self) -> list[asyncpg.Record]:
        return await self._database.call(
            lambda: self._pool.fetch(
                "SELECT id, name, key_prefix, created_at, revoked_at FROM admin_keys ORDER BY created_at"
            )
        )

    async def revoke_admin_key(self, key_id: str) -> asyncpg.Record | None:
        """Revokes an active admin key; the key as it now stands, or None if there was no active key of that id."""
        return await self._database.call(
            lambda: self._pool.fetchrow(
                "UPDATE admin_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL"
                " RETURNING id, name, key_prefix, created_at, revoked_at",
                key_id,
            )
        )


_TENANT_COLUMNS = (
    "t.id, t.name, t.requests_per_minute, t.tokens_per_minute, t.monthly_token_quota, t.retention_days,"
    " t.max_priority, t.default_priority, t.default_profile, t.cache_shared_scope, t.cache_sampled, t.default_variant,"
    # the same digest the safety stage computes (services/safety/store.py); jsonb's text form is canonical
    " (SELECT md5(p.policy::text) FROM safety_policies p WHERE p.tenant_id IN (t.id, '*')"
    "  ORDER BY p.tenant_id = '*' LIMIT 1) AS screening_policy"
)


def _tenant(row: asyncpg.Record) -> Tenant:
    return Tenant(**dict(row))


class ModelCatalog:
    """Registry lookups for every request, cached for a few seconds so the database is not on the hot path. A lookup
    waits at most ``timeout_s``; while the database cannot answer, the models last read are served (models change
    rarely), and only an ingress that never read them raises DependencyUnavailable."""

    def __init__(self, registry: ModelRegistry, ttl_s: float, timeout_s: float = 2.0) -> None:
        self._registry, self._ttl_s = registry, ttl_s
        self._database = Breaker("database", timeout_s, max(ttl_s, 1.0), DATABASE_FAILURES)
        self._models: dict[str, ModelRecord] | None = None
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def all(self) -> dict[str, ModelRecord]:
        async with self._lock:
            if time.monotonic() - self._loaded_at > self._ttl_s:
                try:
                    enabled = await self._database.call(self._registry.enabled)
                except DependencyUnavailable:
                    if self._models is None:
                        raise
                else:
                    self._models = {m.id: m for m in enabled}
                    self._loaded_at = time.monotonic()
        assert self._models is not None
        return self._models


@dataclasses.dataclass(frozen=True)
class StoredResponse:
    conversation: list[dict[str, object]]
    """The items that led to the response (its input, and the earlier responses' it continued), then its output."""
    response: dict[str, object]
    finish_by: datetime | None = None
    """Background mode: by when it must have been finished (else whoever finished it stopped)."""
    reply_topic: str | None = None
    """Background mode: where its answer is heard."""
    finisher: str | None = None
    """Background mode: the instance finishing it."""
    reply_offset: int | None = None
    """Background mode: the reply topic's offset before the request left (its answer comes after)."""
    input_count: int | None = None
    """How many of ``conversation``'s items are the response's own input."""
    tenant_id: str | None = None
    charge: Charge | None = None
    """Background mode: what the tenant's limits were charged when it was asked, to settle when it ends."""
    streamed: bool = False
    """Background mode: asked with stream true (its events are kept for readers)."""
    screened_beside: bool = False
    """Background mode: its prompt was screened beside generation (its output waits for the safety stage's verdict)."""


@dataclasses.dataclass(frozen=True)
class Unfinished:
    """A background response not finished yet, and the instance finishing it."""

    id: str
    finisher: str | None


class NotStorable(Exception):
    """Text PostgreSQL's jsonb cannot hold: the character U+0000."""


@contextlib.contextmanager
def _storable() -> Iterator[None]:
    try:
        yield
    except asyncpg.UntranslatableCharacterError:
        raise NotStorable("the text holds the character U+0000, which PostgreSQL's jsonb cannot store") from None


# a stored response's columns but its conversation (the largest, and read only when asked: _CONVERSATION_COLUMN)
_STORED_COLUMNS = (
    "s.tenant_id, s.response, s.finish_by, s.reply_topic, s.finisher, s.reply_offset, s.input_count, s.charge,"
    " s.streamed, s.screened_beside, s.previous_id"
)
_CONVERSATION_COLUMN = ", s.conversation"
# the conversations of the responses before one (its previous_id, and theirs), first response first
_EARLIER = (
    "WITH RECURSIVE earlier AS (SELECT id, previous_id, conversation, 0 AS depth FROM stored_responses WHERE id = $1"
    " UNION ALL SELECT s.id, s.previous_id, s.conversation, earlier.depth + 1 FROM stored_responses s"
    " JOIN earlier ON s.id = earlier.previous_id)"
    " SELECT conversation FROM earlier ORDER BY depth DESC"
)


def _stored(row: asyncpg.Record, conversation: list[dict[str, object]]) -> StoredResponse:
    return StoredResponse(
        conversation,
        json.loads(row["response"]),
        finish_by=row["finish_by"],
        reply_topic=row["reply_topic"],
        finisher=row["finisher"],
        reply_offset=row["reply_offset"],
        input_count=row["input_count"],
        tenant_id=row["tenant_id"],
        charge=Charge(row["tenant_id"], **json.loads(row["charge"])) if row["charge"] else None,
        streamed=row["streamed"],
        screened_beside=row["screened_beside"],
    )


def _charged(charge: Charge) -> dict[str, object]:
    return {
        "window": charge.window,
        "month": charge.month,
        "tokens": charge.tokens,
        "settled_once_as": charge.settled_once_as,
        "request_id": charge.request_id,
    }


# a stored response is readable while the tenant's retention, as it stands now, covers its age
_RETAINED = "s.created_at + t.retention_days * interval '1 day' > now()"
# ...and its text is kept while it covers its thread's latest response (migration 0024)
_THREAD_RETAINED = "h.last_at + t.retention_days * interval '1 day' > now()"


def _past_retention(table: str, kept_from: str) -> str:
    """A sweep's condition on the rows of ``table`` that no retention covers since their ``kept_from`` time: found
    tenant by tenant by a (tenant_id, kept_from) index (OFFSET 0 keeps the planner from making the per-tenant lookup a
    join), then deleted by their row ids, where a join on a negated retention read every row at every pass."""
    return (
        f"ctid = ANY(ARRAY(SELECT r.ctid FROM tenants t CROSS JOIN LATERAL (SELECT ctid FROM {table} r"
        f" WHERE r.tenant_id = t.id AND r.{kept_from} <= now() - t.retention_days * interval '1 day' OFFSET 0) r))"
    )


# the sweep deletes the threads past it; their responses go with them
_THREADS_PAST_RETENTION = _past_retention("response_threads", "last_at")
# the ids of a stored response's items, as its index holds them (migration 0023)
_ITEM_IDS = "jsonb_path_query_array(s.conversation, '$[*].id')"
# a background response not finished yet (the table's name, or its alias, goes in)
_QUEUED = "{0}.response->>'status' IN ('queued', 'in_progress')"


SWEEP_TIMEOUT_S = 120.0
"""How long one retention sweep of a table may take. Not the timeout of the lookups that serve requests (2 s): a large
backlog takes longer to delete (a batch of a million results took 3.9 s here; a tenant whose retention was just
shortened may have millions of rows past it), and a sweep cut off there would be rolled back pass after pass, leaving
what no retention covers in place. Nor does a slow sweep pause the store's lookups, as their breaker would after a
timeout."""


class SweepPasses:
    """Which ingress instance runs the retention sweeps' next pass. Every instance runs them on its own timer; one pass
    an interval, by whichever instance claims it first, does what a pass by each did (migration 0026)."""

    def __init__(self, pool: asyncpg.Pool, timeout_s: float = 2.0) -> None:
        self._pool = pool
        self._database = Breaker("database", timeout_s, 1.0, DATABASE_FAILURES)

    async def claim(self, name: str, every_s: float) -> bool:
        """Whether this instance runs the pass of ``name`` now: none was claimed in the last 0.9 ``every_s``. The
        tenth spared lets the instance that claimed the previous pass claim the next on its own timer (``every_s``
        after the previous pass ended), so passes come about ``every_s`` apart however many instances there are."""
        claimed = await self._database.call(
            lambda: self._pool.fetchval(
                "INSERT INTO sweep_passes (name, started_at) VALUES ($1, now()) ON CONFLICT (name) DO UPDATE"
                " SET started_at = now() WHERE sweep_passes.started_at <= now() - make_interval(secs => $2)"
                " RETURNING true",
                name,
                0.9 * every_s,
            )
        )
        return bool(claimed)


async def _swept(pool: asyncpg.Pool, statement: str) -> int:
    """Runs a sweep's DELETE; returns how many rows it deleted. Raises DependencyUnavailable."""

    async def delete() -> str:
        async with pool.acquire() as conn, conn.transaction():
            # a sweep's plan can be a lookup per tenant, each tiny, which the planner estimates past JIT's threshold:
            # with JIT the same plan ran in 305 ms, without it 3.6 (benchmarks/reports/sweep-scan-2026-12-07)
            await conn.execute("SET LOCAL jit = off")
            return str(await conn.execute(statement))

    done = await bounded("database", SWEEP_TIMEOUT_S, DATABASE_FAILURES, delete())
    return int(done.split()[-1])


class ResponseStore:
    """Responses API answers kept in PostgreSQL for previous_response_id and GET /v1/responses/{id}, only for tenants
    that opted in to retention (the caller checks), and only as long as it covers them: reads skip older ones, and
    ``sweep`` deletes them (and every one of a tenant whose retention is off). Each call waits at most ``timeout_s``;
    while the database cannot answer, it raises DependencyUnavailable.

    A response that continues another stores only the items it adds to its conversation, in its thread: a chain of n
    responses stores each item once, where copies of the whole conversation stored its first turns n times
    (``benchmarks/reports/response-chains-2026-12-07``). Its conversation is read back whole."""

    def __init__(self, pool: asyncpg.Pool, timeout_s: float = 2.0) -> None:
        self._pool = pool
        self._database = Breaker("database", timeout_s, 1.0, DATABASE_FAILURES)

    async def save(self, tenant_id: str, response_id: str, stored: StoredResponse) -> bool:
        """Stores the response, or replaces it while it is still queued (background mode); False when it was not
        (it had ended: cancelled, most likely). Raises NotStorable for text with U+0000."""
        previous_id = stored.response.get("previous_response_id")

        async def save() -> str:
            async with self._pool.acquire() as connection, connection.transaction():
                thread_id, earlier_items = await _continued(connection, tenant_id, previous_id, stored.conversation)
                if thread_id is None:  # a thread of its own, holding its whole conversation
                    thread_id, previous = response_id, None
                    await connection.execute(
                        "INSERT INTO response_threads (id, tenant_id) VALUES ($1, $2)"
                        " ON CONFLICT (id) DO UPDATE SET last_at = now()",
                        thread_id,
                        tenant_id,
                    )
                else:
                    previous = previous_id
                return str(
                    await connection.execute(
                        "INSERT INTO stored_responses (id, tenant_id, conversation, response, finish_by, reply_topic,"
                        " finisher, reply_offset, input_count, charge, streamed, screened_beside, thread_id,"
                        " previous_id, item_count)"
                        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
                        " ON CONFLICT (id) DO UPDATE SET conversation = EXCLUDED.conversation,"
                        " response = EXCLUDED.response, finish_by = EXCLUDED.finish_by,"
                        " reply_topic = EXCLUDED.reply_topic, finisher = EXCLUDED.finisher,"
                        " reply_offset = EXCLUDED.reply_offset, charge = EXCLUDED.charge, streamed = EXCLUDED.streamed,"
                        " screened_beside = EXCLUDED.screened_beside, thread_id = EXCLUDED.thread_id,"
                        " previous_id = EXCLUDED.previous_id, item_count = EXCLUDED.item_count"
                        # a queued response is continued by none; if the one it continues is gone since it was
                        # queued, it takes a thread of its own, with its whole conversation
                        " WHERE stored_responses.tenant_id = EXCLUDED.tenant_id"
                        f" AND {_QUEUED.format('stored_responses')}",
                        response_id,
                        tenant_id,
                        json.dumps(stored.conversation[earlier_items:]),
                        json.dumps(stored.response),
                        stored.finish_by,
                        stored.reply_topic,
                        stored.finisher,
                        stored.reply_offset,
                        stored.input_count,
                        json.dumps(_charged(stored.charge)) if stored.charge else None,
                        stored.streamed,
                        stored.screened_beside,
                        thread_id,
                        previous,
                        len(stored.conversation),
                    )
                )

        with _storable():
            done = await self._database.call(save)
        return done.endswith(" 1")

    async def load(self, tenant_id: str, response_id: str, *, with_conversation: bool = True) -> StoredResponse | None:
        """The tenant's response, while its retention covers it; None otherwise (another tenant's included). Without
        ``with_conversation`` its conversation is left empty, not read (GET and cancel need the response alone, and a
        long chain's conversation takes the longest to read)."""

        async def load() -> StoredResponse | None:
            async with self._pool.acquire() as connection:
                row = await connection.fetchrow(
                    f"SELECT {_STORED_COLUMNS}{_CONVERSATION_COLUMN if with_conversation else ''}"
                    " FROM stored_responses s JOIN tenants t ON t.id = s.tenant_id"
                    f" WHERE s.id = $1 AND s.tenant_id = $2 AND NOT s.deleted AND {_RETAINED}",
                    response_id,
                    tenant_id,
                )
                if row is not None and not with_conversation:
                    return _stored(row, [])
                return await _with_earlier(connection, row)

        return await self._database.call(load)

    async def unfinished(self) -> list[Unfinished]:
        """Background responses not finished yet, before their deadline, that another instance could finish."""
        rows = await self._database.call(
            lambda: self._pool.fetch(
                f"SELECT id, finisher FROM stored_responses WHERE {_QUEUED.format('stored_responses')}"
                " AND finish_by > now() AND reply_offset IS NOT NULL"
            )
        )
        return [Unfinished(row["id"], row["finisher"]) for row in rows]

    async def claim(self, response_id: str, finisher: str | None, claimer: str) -> StoredResponse | None:
        """Makes ``claimer`` the finisher of an unfinished response that ``finisher`` had; the response, or None
        when it ended or another instance claimed it first."""

        async def claim() -> StoredResponse | None:
            async with self._pool.acquire() as connection:
                row = await connection.fetchrow(
                    "UPDATE stored_responses s SET finisher = $3 WHERE s.id = $1"
                    f" AND s.finisher IS NOT DISTINCT FROM $2 AND {_QUEUED.format('s')} AND s.finish_by > now()"
                    f" RETURNING {_STORED_COLUMNS}{_CONVERSATION_COLUMN}",
                    response_id,
                    finisher,
                    claimer,
                )
                return await _with_earlier(connection, row)

        return await self._database.call(claim)

    async def cancel(self, tenant_id: str, response_id: str) -> dict[str, object] | None:
        """Marks a queued response cancelled; the response as it is now, or None when it was not queued."""
        response = await self._database.call(
            lambda: self._pool.fetchval(
                "UPDATE stored_responses SET response = jsonb_set(response, '{status}', '\"cancelled\"')"
                f" WHERE id = $1 AND tenant_id = $2 AND {_QUEUED.format('stored_responses')}"
                " AND finish_by > now() RETURNING response",
                response_id,
                tenant_id,
            )
        )
        return json.loads(response) if response is not None else None

    async def items(self, tenant_id: str, item_ids: list[str]) -> dict[str, dict[str, object]]:
        """The items with these ids in the tenant's stored conversations (an input's or an output's), by id, while
        retention covers the thread that holds them; ids not found are left out."""
        rows = await self._database.call(
            lambda: self._pool.fetch(
                # the responses holding the id, found by their ids' index (migration 0023); OFFSET 0 keeps the
                # planner from reading the tenant's responses latest first instead, which for an old or unknown id
                # means reading them all
                "SELECT ref, found.item FROM unnest($2::text[]) ref CROSS JOIN LATERAL ("
                " SELECT item FROM (SELECT s.conversation, s.created_at FROM stored_responses s"
                " JOIN response_threads h ON h.id = s.thread_id JOIN tenants t ON t.id = s.tenant_id"
                f" WHERE s.tenant_id = $1 AND {_ITEM_IDS} @> jsonb_build_array(ref) AND {_THREAD_RETAINED}"
                " OFFSET 0) s, jsonb_array_elements(s.conversation) item"
                " WHERE item->>'id' = ref ORDER BY s.created_at DESC LIMIT 1) found",
                tenant_id,
                list(dict.fromkeys(item_ids)),
            )
        )
        return {row["ref"]: json.loads(row["item"]) for row in rows}

    async def delete(self, tenant_id: str, response_id: str) -> bool:
        """Deletes the tenant's response; False when there was none. One that later responses continue is only
        marked deleted (they read its items) until its thread goes; the deleted ones that nothing continues any
        more go with it."""

        async def delete() -> bool:
            async with self._pool.acquire() as connection, connection.transaction():
                thread_id = await connection.fetchval(
                    "SELECT thread_id FROM stored_responses WHERE id = $1 AND tenant_id = $2 AND NOT deleted",
                    response_id,
                    tenant_id,
                )
                if thread_id is None:
                    return False
                # one writer of a thread at a time: a response stored continuing this one, or one it continues,
                # must not find it here and then gone
                await connection.execute("SELECT 1 FROM response_threads WHERE id = $1 FOR UPDATE", thread_id)
                await connection.execute("UPDATE stored_responses SET deleted = true WHERE id = $1", response_id)
                await connection.execute(_DELETED_UNREAD, response_id)
                await connection.execute(
                    "DELETE FROM response_threads h WHERE id = $1"
                    " AND NOT EXISTS (SELECT 1 FROM stored_responses s WHERE s.thread_id = h.id)",
                    thread_id,
                )
                return True

        return await self._database.call(delete)

    async def sweep(self) -> int:
        """Deletes every response no retention covers any more; returns how many."""
        return await _swept(
            self._pool,
            # the responses are deleted here, not by the cascade, to count them
            f"WITH gone AS (DELETE FROM response_threads WHERE {_THREADS_PAST_RETENTION} RETURNING id)"
            " DELETE FROM stored_responses WHERE thread_id IN (SELECT id FROM gone)",
        )


# a response marked deleted, and the deleted ones it continues, as long as none is continued by another response:
# removed (the walk stops at the first that is continued, or not deleted)
_DELETED_UNREAD = (
    "WITH RECURSIVE unread AS (SELECT id, previous_id FROM stored_responses WHERE id = $1 AND deleted"
    " AND NOT EXISTS (SELECT 1 FROM stored_responses c WHERE c.previous_id = $1)"
    " UNION ALL SELECT s.id, s.previous_id FROM stored_responses s JOIN unread ON s.id = unread.previous_id"
    " WHERE s.deleted"
    " AND NOT EXISTS (SELECT 1 FROM stored_responses c WHERE c.previous_id = s.id AND c.id <> unread.id))"
    " DELETE FROM stored_responses WHERE id IN (SELECT id FROM unread)"
)


async def _continued(
    connection: asyncpg.Connection, tenant_id: str, previous_id: object, conversation: list[dict[str, object]]
) -> tuple[str | None, int]:
    """The thread of the tenant's stored response ``previous_id``, locked until the transaction ends, and how many
    items its conversation holds (they begin ``conversation``); (None, 0) when it is gone, or not continued."""
    if not isinstance(previous_id, str):
        return None, 0
    # the thread's latest response is now this one, and a delete or a sweep of the thread waits for it: after this,
    # the previous response is read again, as they left it (a response never leaves its thread once continued)
    thread_id = await connection.fetchval(
        "UPDATE response_threads h SET last_at = now() FROM stored_responses s"
        " WHERE s.id = $1 AND s.tenant_id = $2 AND h.id = s.thread_id RETURNING h.id",
        previous_id,
        tenant_id,
    )
    if thread_id is None:
        return None, 0
    items = await connection.fetchval(
        # one stored before migration 0024 holds its whole conversation, uncounted
        "SELECT coalesce(item_count, jsonb_array_length(conversation)) FROM stored_responses"
        " WHERE id = $1 AND thread_id = $2",
        previous_id,
        thread_id,
    )
    if items is None or items > len(conversation):
        return None, 0
    return thread_id, items


async def _with_earlier(connection: asyncpg.Connection, row: asyncpg.Record | None) -> StoredResponse | None:
    """The stored response of ``row`` (with its conversation column), its conversation read whole (the earlier
    responses' items first)."""
    if row is None:
        return None
    earlier = await connection.fetch(_EARLIER, row["previous_id"]) if row["previous_id"] is not None else []
    conversation = [item for before in earlier for item in json.loads(before["conversation"])]
    return _stored(row, conversation + json.loads(row["conversation"]))


@dataclasses.dataclass(frozen=True)
class Conversation:
    id: str
    created_at: datetime
    metadata: dict[str, str]


# a conversation is readable while the tenant's retention covers its last change, and each item while it covers the
# time it was added (as the setting stands now)
_CONVERSATION_RETAINED = "c.updated_at + t.retention_days * interval '1 day' > now()"
_ITEM_RETAINED = "i.created_at + t.retention_days * interval '1 day' > now()"


class ConversationStore:
    """OpenAI's conversations (their items, in order), kept in PostgreSQL only for tenants that opted in to retention
    (the caller checks) and only as long as it covers them: reads skip the rest, and ``sweep`` deletes it. Each call
    waits at most ``timeout_s``; while the database cannot answer, it raises DependencyUnavailable."""

    def __init__(self, pool: asyncpg.Pool, timeout_s: float = 2.0) -> None:
        self._pool = pool
        self._database = Breaker("database", timeout_s, 1.0, DATABASE_FAILURES)

    async def create(
        self, tenant_id: str, conversation_id: str, metadata: dict[str, str], items: list[dict[str, object]]
    ) -> Conversation:
        """Raises DuplicateItem or NotStorable (see _insert_items), the latter for metadata too."""

        async def create() -> Conversation:
            async with self._pool.acquire() as connection, connection.transaction():
                created_at = await connection.fetchval(
                    "INSERT INTO conversations (id, tenant_id, metadata) VALUES ($1, $2, $3) RETURNING created_at",
                    conversation_id,
                    tenant_id,
                    json.dumps(metadata),
                )
                await _insert_items(connection, tenant_id, conversation_id, items)
            return Conversation(conversation_id, created_at, metadata)

        with _storable():
            return await self._database.call(create)

    async def get(self, tenant_id: str, conversation_id: str) -> Conversation | None:
        row = await self._database.call(
            lambda: self._pool.fetchrow(
                "SELECT c.created_at, c.metadata FROM conversations c JOIN tenants t ON t.id = c.tenant_id"
                f" WHERE c.id = $1 AND c.tenant_id = $2 AND {_CONVERSATION_RETAINED}",
                conversation_id,
                tenant_id,
            )
        )
        return Conversation(conversation_id, row["created_at"], json.loads(row["metadata"])) if row else None

    async def set_metadata(self, tenant_id: str, conversation_id: str, metadata: dict[str, str]) -> Conversation | None:
        with _storable():
            row = await self._database.call(
                lambda: self._pool.fetchrow(
                    "UPDATE conversations c SET metadata = $3, updated_at = now() FROM tenants t"
                    " WHERE t.id = c.tenant_id AND c.id = $1 AND c.tenant_id = $2"
                    f" AND {_CONVERSATION_RETAINED} RETURNING c.created_at",
                    conversation_id,
                    tenant_id,
                    json.dumps(metadata),
                )
            )
        return Conversation(conversation_id, row["created_at"], metadata) if row else None

    async def delete(self, tenant_id: str, conversation_id: str) -> bool:
        done = await self._database.call(
            lambda: self._pool.execute(
                "DELETE FROM conversations WHERE id = $1 AND tenant_id = $2", conversation_id, tenant_id
            )
        )
        return str(done).endswith(" 1")

    async def items(self, tenant_id: str, conversation_id: str) -> list[dict[str, object]] | None:
        """The conversation's items still retained, in order; None when there is no such conversation."""
        rows = await self._database.call(
            lambda: self._pool.fetch(
                "SELECT i.item FROM conversations c JOIN tenants t ON t.id = c.tenant_id"
                f" LEFT JOIN conversation_items i ON i.conversation_id = c.id AND {_ITEM_RETAINED}"
                f" WHERE c.id = $1 AND c.tenant_id = $2 AND {_CONVERSATION_RETAINED} ORDER BY i.position",
                conversation_id,
                tenant_id,
            )
        )
        if not rows:
            return None
        return [json.loads(row["item"]) for row in rows if row["item"] is not None]

    async def items_by_id(self, tenant_id: str, item_ids: list[str]) -> dict[str, dict[str, object]]:
        """The items with these ids in the tenant's conversations, by id, while retention covers them; ids not found
        are left out."""
        rows = await self._database.call(
            lambda: self._pool.fetch(
                "SELECT DISTINCT ON (i.id) i.id, i.item FROM conversation_items i"
                " JOIN conversations c ON c.id = i.conversation_id JOIN tenants t ON t.id = c.tenant_id"
                f" WHERE i.id = ANY($2::text[]) AND c.tenant_id = $1 AND {_ITEM_RETAINED}",
                tenant_id,
                list(dict.fromkeys(item_ids)),
            )
        )
        return {row["id"]: json.loads(row["item"]) for row in rows}

    async def add_items(self, tenant_id: str, conversation_id: str, items: list[dict[str, object]]) -> bool:
        """Appends the items; False when there is no such conversation."""

        async def add() -> bool:
            async with self._pool.acquire() as connection, connection.transaction():
                found = await connection.fetchval(
                    "UPDATE conversations c SET updated_at = now() FROM tenants t WHERE t.id = c.tenant_id"
                    f" AND c.id = $1 AND c.tenant_id = $2 AND {_CONVERSATION_RETAINED} RETURNING c.id",
                    conversation_id,
                    tenant_id,
                )
                if found is not None:
                    await _insert_items(connection, tenant_id, conversation_id, items)
            return found is not None

        return await self._database.call(add)

    async def delete_item(self, tenant_id: str, conversation_id: str, item_id: str) -> bool:
        done = await self._database.call(
            lambda: self._pool.execute(
                "WITH touched AS (UPDATE conversations SET updated_at = now() WHERE id = $1 AND tenant_id = $2"
                " RETURNING id) DELETE FROM conversation_items i USING touched"
                " WHERE i.conversation_id = touched.id AND i.id = $3",
                conversation_id,
                tenant_id,
                item_id,
            )
        )
        return str(done).endswith(" 1")

    async def sweep(self) -> int:
        """Deletes every item and conversation no retention covers any more; returns how many rows."""

        items = await _swept(
            self._pool, f"DELETE FROM conversation_items WHERE {_past_retention('conversation_items', 'created_at')}"
        )
        # a conversation is kept for its tenant's retention after its last change: its items have gone before it
        return items + await _swept(
            self._pool, f"DELETE FROM conversations WHERE {_past_retention('conversations', 'updated_at')}"
        )


class DuplicateItem(Exception):
    """An item whose id the conversation already holds."""


async def _insert_items(
    connection: asyncpg.Connection, tenant_id: str, conversation_id: str, items: list[dict[str, object]]
) -> None:
    """Adds items to the tenant's conversation, which the caller has just written in this transaction. Raises
    DuplicateItem for an id the conversation holds, NotStorable for text with U+0000."""
    try:
        with _storable():
            await connection.executemany(
                # the conversation's tenant too, for the sweep (migration 0025)
                "INSERT INTO conversation_items (conversation_id, id, item, tenant_id) VALUES ($1, $2, $3, $4)",
                [(conversation_id, str(item["id"]), json.dumps(item), tenant_id) for item in items],
            )
    except asyncpg.UniqueViolationError:
        raise DuplicateItem(conversation_id) from None


class Liveness:
    """Each ingress instance beats in Redis (a key that expires ``ttl_s`` after its last beat), so that the others
    can tell which have stopped."""

    def __init__(self, redis: Redis, prefix: str, instance_id: str, ttl_s: float, timeout_s: float = 2.0) -> None:
        self._redis, self._prefix, self.instance_id, self._ttl_ms = redis, prefix, instance_id, int(ttl_s * 1000)
        # while Redis is down nobody beats, and nobody takes anything over: unsure who stopped, all wait
        self._calls = Breaker("liveness", timeout_s, ttl_s, REDIS_FAILURES)

    def _key(self, instance_id: str) -> str:
        return f"{self._prefix}ingress-alive:{instance_id}"

    async def beat(self) -> None:
        await self._calls.call(lambda: self._redis.set(self._key(self.instance_id), "1", px=self._ttl_ms))

    async def alive(self, instance_ids: set[str]) -> set[str]:
        """Those of ``instance_ids`` that beat within the last ``ttl_s``."""
        ordered = sorted(instance_ids)
        if not ordered:
            return set()
        found = await self._calls.call(lambda: self._redis.mget([self._key(instance_id) for instance_id in ordered]))
        return {instance_id for instance_id, beat in zip(ordered, found, strict=True) if beat is not None}

    async def stop(self) -> None:
        """No more beats: the others take over at once rather than after ``ttl_s``."""
        with contextlib.suppress(DependencyUnavailable):  # then they take over after ttl_s
            await self._calls.call(lambda: self._redis.delete(self._key(self.instance_id)))


@dataclasses.dataclass
class _Replayed:
    """One request a RepliesReplay reads for."""

    offset: int
    deadline_ms: float
    """Its deadline, in the milliseconds of Kafka's record timestamps."""
    gate: ReleaseGate
    queue: asyncio.Queue[ReplyEvent | BaseException] = dataclasses.field(default_factory=asyncio.Queue)


class RepliesReplay:
    """The replies of requests whose instance stopped listening, read again from its reply topic (the worker and the
    safety stage reply there regardless), for the instance that takes its background responses over. Each request
    gets what ``ReplyListener.expect`` gave the instance that asked: its replies from the offset the topic had when
    it left, in order, up to its final one, held back the same way until the safety stage's verdict
    (``cleared=False``), and TimeoutError at its deadline, judged by when each reply was sent, so a request taken
    over late still ends as it did. One consumer reads the topic once for all of them, from the earliest offset:
    an instance that stops may leave a thousand responses to take over, all on its one topic."""

    def __init__(self, common: CommonSettings, topic: str) -> None:
        self._common, self.topic = common, topic
        self._waiting: dict[str, _Replayed] = {}
        self._earliest_deadline_ms = float("inf")
        self._task: asyncio.Task[None] | None = None

    def expect(
        self, request_id: str, offset: int, deadline_at: datetime, cleared: bool = True
    ) -> AsyncIterator[ReplyEvent]:
        """Registers a request (before ``start``) and returns its replies."""
        assert self._task is None, "requests are registered before the replay starts"
        state = _Replayed(offset, deadline_at.timestamp() * 1000, ReleaseGate(cleared=cleared))
        self._waiting[request_id] = state
        self._earliest_deadline_ms = min(self._earliest_deadline_ms, state.deadline_ms)
        return self._read(state)

    def start(self) -> asyncio.Task[None]:
        """Starts reading; the task ends once every request has its final reply or its deadline."""
        self._task = asyncio.create_task(self._run(), name=f"replies replay {self.topic}")
        return self._task

    @staticmethod
    async def _read(state: _Replayed) -> AsyncIterator[ReplyEvent]:
        while True:
            item = await state.queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, CompletionFinished | GenerationFailed):
                return

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._common.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id="ferry-takeover",
        )
        try:
            await consumer.start()
            partition = TopicPartition(self.topic, 0)
            consumer.assign([partition])
            consumer.seek(partition, min((s.offset for s in self._waiting.values()), default=0))
            while self._waiting:
                records = (await consumer.getmany(partition, timeout_ms=1000)).get(partition, [])
                if not records:  # read to the end: past its deadline, nothing more can count for a request
                    now_ms = utc_now().timestamp() * 1000
                    self._expire(lambda state, now_ms=now_ms: now_ms > state.deadline_ms)
                for record in records:
                    if record.timestamp > self._earliest_deadline_ms:  # (taken over late, what came before counts)
                        # sent after their deadline, when their listener had stopped waiting
                        self._expire(lambda state, sent_ms=record.timestamp: sent_ms > state.deadline_ms)
                    self._route(record)
        except Exception as exc:  # each request's reader gets it, rather than waiting for ever
            logger.warning("replies on %s could not be read again: %r", self.topic, exc)
            for state in self._waiting.values():
                state.queue.put_nowait(DependencyUnavailable("kafka"))
            self._waiting.clear()
        finally:
            await consumer.stop()

    def _route(self, record: ConsumerRecord) -> None:
        try:
            event = reply_event_adapter.validate_json(record.value or b"")
        except ValidationError:
            return  # dead-lettered by the instance that read it
        state = self._waiting.get(event.request_id)
        if state is None or record.offset < state.offset:
            return
        for ready in state.gate.admit(event):
            state.queue.put_nowait(ready)
            if isinstance(ready, CompletionFinished | GenerationFailed):
                self._done(event.request_id)

    def _expire(self, past: Callable[[_Replayed], bool]) -> None:
        for request_id in [rid for rid, state in self._waiting.items() if past(state)]:
            self._waiting[request_id].queue.put_nowait(TimeoutError())
            self._done(request_id)

    def _done(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)
        self._earliest_deadline_ms = min((s.deadline_ms for s in self._waiting.values()), default=float("inf"))


@dataclasses.dataclass(frozen=True)
class LoggedEvent:
    sequence: int
    text: str
    """The event as server-sent events frame it."""
    ends: bool
    """Whether the stream ends with it."""


class EventLog:
    """The events of streamed background responses, kept in Redis (a stream per response) so that a client takes a
    stream up again after it was cut, from any instance (GET /v1/responses/{id}?stream=true&starting_after=N). Kept
    until a set time after the response's deadline. Calls raise DependencyUnavailable while Redis does not answer."""

    def __init__(self, redis: Redis, prefix: str, timeout_s: float = 2.0) -> None:
        self._redis, self._prefix = redis, prefix
        self._calls = Breaker("response_events", timeout_s, 1.0, REDIS_FAILURES)
        # a read blocks for half the time a call may take (the client's socket timeout too): waiting for the next
        # event must not read as Redis not answering, which would end the stream and pause every call for a while
        self._block_ms = max(10, int(timeout_s * 500))

    def _key(self, response_id: str) -> str:
        return f"{self._prefix}response-events:{response_id}"

    async def append(self, response_id: str, event: LoggedEvent, expire_at: datetime) -> None:
        key = self._key(response_id)
        fields = {"s": str(event.sequence), "e": event.text, "end": "1" if event.ends else "0"}

        async def append() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(key, fields)  # type: ignore[arg-type]
                pipe.expireat(key, expire_at)
                await pipe.execute()

        await self._calls.call(append)

    async def exists(self, response_id: str) -> bool:
        return bool(await self._calls.call(lambda: self._redis.exists(self._key(response_id))))

    async def last(self, response_id: str) -> LoggedEvent | None:
        entries = await self._calls.call(lambda: self._redis.xrevrange(self._key(response_id), count=1))
        return _logged(entries[0][1]) if entries else None

    async def read(self, response_id: str, after: int, until: datetime) -> AsyncIterator[LoggedEvent]:
        """The events after sequence number ``after``, as they come, up to the one the stream ends with; stops at
        ``until`` (the response's deadline) if none does by then."""
        key, position = self._key(response_id), "0-0"
        while utc_now() < until:
            found = await self._calls.call(
                lambda at=position: self._redis.xread({key: at}, count=100, block=self._block_ms)  # type: ignore[misc]
            )
            for _, entries in found or []:
                for entry_id, fields in entries:
                    position = entry_id
                    event = _logged(fields)
                    if event.sequence > after:  # once each: two instances may both keep one (a beat missed)
                        after = event.sequence
                        yield event
                    if event.ends:
                        return


def _logged(fields: dict[bytes, bytes]) -> LoggedEvent:
    return LoggedEvent(int(fields[b"s"]), fields[b"e"].decode(), fields[b"end"] == b"1")


@dataclasses.dataclass(frozen=True)
class StoredFile:
    """A file of OpenAI's Files API, without its content."""

    id: str
    purpose: str
    filename: str
    bytes: int
    created_at: datetime
    expires_at: datetime | None
    """When the sweep deletes it: the sooner of the upload's expires_after and the tenant's retention."""


# a file is readable until its own expiry, and while the tenant's retention (as it stands now) covers its age
_FILE_KEPT = (
    "(f.expires_at IS NULL OR f.expires_at > now()) AND f.created_at + t.retention_days * interval '1 day' > now()"
)
_FILE_COLUMNS = (
    "f.id, f.purpose, f.filename, octet_length(f.content) AS bytes, f.created_at,"
    " LEAST(f.expires_at, f.created_at + t.retention_days * interval '1 day') AS expires_at"
)


class FileStore:
    """OpenAI's files, kept in PostgreSQL for tenants that opted in to retention (the caller checks) until they expire
    or are deleted; ``sweep`` deletes the expired ones. Calls with a file's content wait at most ``content_timeout_s``
    (a file can be tens of megabytes), others ``timeout_s``; while the database cannot answer, they raise
    DependencyUnavailable."""

    def __init__(self, pool: asyncpg.Pool, timeout_s: float = 2.0, content_timeout_s: float = 60.0) -> None:
        self._pool = pool
        self._database = Breaker("database", timeout_s, 1.0, DATABASE_FAILURES)
        self._content = Breaker("database", content_timeout_s, 1.0, DATABASE_FAILURES)

    async def create(
        self,
        tenant_id: str,
        file_id: str,
        purpose: str,
        filename: str,
        content: bytes | bytearray,
        expires_at: datetime | None,
    ) -> StoredFile:
        """Stores a file; the same id stored again (a batch's output file, written again after a takeover) keeps the
        first."""
        await self._content.call(
            lambda: self._pool.execute(
                "INSERT INTO files (id, tenant_id, purpose, filename, content, expires_at)"
                " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                file_id,
                tenant_id,
                purpose,
                filename,
                content,
                expires_at,
            )
        )
        stored = await self.get(tenant_id, file_id)
        assert stored is not None, "just stored, for a tenant that keeps text"
        return stored

    async def get(self, tenant_id: str, file_id: str) -> StoredFile | None:
        row = await self._database.call(
            lambda: self._pool.fetchrow(
                f"SELECT {_FILE_COLUMNS} FROM files f JOIN tenants t ON t.id = f.tenant_id"
                f" WHERE f.id = $1 AND f.tenant_id = $2 AND {_FILE_KEPT}",
                file_id,
                tenant_id,
            )
        )
        return StoredFile(**dict(row)) if row is not None else None

    async def content(self, tenant_id: str, file_id: str) -> bytes | None:
        content = await self._content.call(
            lambda: self._pool.fetchval(
                "SELECT f.content FROM files f JOIN tenants t ON t.id = f.tenant_id"
                f" WHERE f.id = $1 AND f.tenant_id = $2 AND {_FILE_KEPT}",
                file_id,
                tenant_id,
            )
        )
        return bytes(content) if content is not None else None

    async def list(
        self, tenant_id: str, purpose: str | None, after: str | None, limit: int, ascending: bool
    ) -> list[StoredFile]:
        """The tenant's files, newest first (or oldest, ``ascending``), after the file ``after``; ``limit`` of them."""
        order = "ASC" if ascending else "DESC"
        compare = ">" if ascending else "<"
        rows = await self._database.call(
            lambda: self._pool.fetch(
                f"SELECT {_FILE_COLUMNS} FROM files f JOIN tenants t ON t.id = f.tenant_id"
                f" WHERE f.tenant_id = $1 AND {_FILE_KEPT} AND ($2::text IS NULL OR f.purpose = $2)"
                f" AND ($3::text IS NULL OR (f.created_at, f.id) {compare}"
                " (SELECT created_at, id FROM files WHERE id = $3 AND tenant_id = $1))"
                f" ORDER BY f.created_at {order}, f.id {order} LIMIT $4",
                tenant_id,
                purpose,
                after,
                limit,
            )
        )
        return [StoredFile(**dict(row)) for row in rows]

    async def delete(self, tenant_id: str, file_id: str) -> bool:
        done = await self._database.call(
            lambda: self._pool.execute("DELETE FROM files WHERE id = $1 AND tenant_id = $2", file_id, tenant_id)
        )
        return str(done).endswith(" 1")

    async def sweep(self) -> int:
        """Deletes every file past its expiry or its tenant's retention; returns how many."""
        # two statements, each found by its index: the expired files, then those past their tenant's retention
        expired = await _swept(self._pool, "DELETE FROM files WHERE expires_at <= now()")
        return expired + await _swept(self._pool, f"DELETE FROM files WHERE {_past_retention('files', 'created_at')}")


@dataclasses.dataclass(frozen=True)
class BatchCounts:
    """What a batch's answered requests add up to."""

    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0


@dataclasses.dataclass(frozen=True)
class StoredBatch:
    tenant_id: str
    batch: dict[str, object]
    """The batch object, less request_counts and usage (BatchCounts)."""
    counts: BatchCounts
    finisher: str | None


@dataclasses.dataclass(frozen=True)
class BatchState:
    """Who runs a batch, and how far it is: what a running batch's instance checks while its requests run."""

    status: str
    finisher: str | None


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """One request's answer (or error) in a batch, as its output or error file's line holds it."""

    line: int
    succeeded: bool
    result: str
    """The line, JSON."""
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0


_BATCH_RETAINED = "b.created_at + t.retention_days * interval '1 day' > now()"
_BATCH_RUNNING = "b.batch->>'status' IN ('validating', 'in_progress', 'finalizing', 'cancelling')"
_BATCH_COLUMNS = (
    "b.tenant_id, b.batch, b.finisher, (SELECT row(count(*) FILTER (WHERE r.succeeded),"
    " count(*) FILTER (WHERE NOT r.succeeded), coalesce(sum(r.input_tokens), 0), coalesce(sum(r.cached_tokens), 0),"
    " coalesce(sum(r.output_tokens), 0), coalesce(sum(r.reasoning_tokens), 0))"
    " FROM batch_results r WHERE r.batch_id = b.id) AS counts"
)


def _batch(row: asyncpg.Record) -> StoredBatch:
    return StoredBatch(row["tenant_id"], json.loads(row["batch"]), BatchCounts(*row["counts"]), row["finisher"])


RESULTS_PAGE = 1_000
"""A batch's results read or written at once: a few megabytes."""


class BatchStore:
    """OpenAI's batches and their requests' results, in PostgreSQL for tenants that opted in to retention (the caller
    checks), readable for the tenant's retention after they were created; ``sweep`` deletes the rest. Each call waits
    at most ``timeout_s``; while the database cannot answer, it raises DependencyUnavailable."""

    def __init__(self, pool: asyncpg.Pool, timeout_s: float = 2.0) -> None:
        self._pool = pool
        self._database = Breaker("database", timeout_s, 1.0, DATABASE_FAILURES)

    async def create(self, tenant_id: str, batch: dict[str, object], finisher: str) -> None:
        """Raises NotStorable for metadata with U+0000."""
        with _storable():
            await self._database.call(
                lambda: self._pool.execute(
                    "INSERT INTO batches (id, tenant_id, batch, finisher) VALUES ($1, $2, $3, $4)",
                    batch["id"],
                    tenant_id,
                    json.dumps(batch),
                    finisher,
                )
            )

    async def get(self, tenant_id: str | None, batch_id: str) -> StoredBatch | None:
        """The batch, with its counts; another tenant's (``tenant_id`` given) or one past retention is None."""
        row = await self._database.call(
            lambda: self._pool.fetchrow(
                f"SELECT {_BATCH_COLUMNS} FROM batches b JOIN tenants t ON t.id = b.tenant_id"
                f" WHERE b.id = $1 AND ($2::text IS NULL OR b.tenant_id = $2) AND {_BATCH_RETAINED}",
                batch_id,
                tenant_id,
            )
        )
        return _batch(row) if row is not None else None

    async def state(self, batch_id: str) -> BatchState | None:
        """The batch's status and instance, without its counts; one past retention is None."""
        row = await self._database.call(
            lambda: self._pool.fetchrow(
                "SELECT b.batch->>'status' AS status, b.finisher FROM batches b JOIN tenants t ON t.id = b.tenant_id"
                f" WHERE b.id = $1 AND {_BATCH_RETAINED}",
                batch_id,
            )
        )
        return BatchState(row["status"], row["finisher"]) if row is not None else None

    async def list(self, tenant_id: str, after: str | None, limit: int) -> list[StoredBatch]:
        """The tenant's batches, newest first, after the batch ``after``; ``limit`` of them."""
        rows = await self._database.call(
            lambda: self._pool.fetch(
                f"SELECT {_BATCH_COLUMNS} FROM batches b JOIN tenants t ON t.id = b.tenant_id"
                f" WHERE b.tenant_id = $1 AND {_BATCH_RETAINED} AND ($2::text IS NULL OR (b.created_at, b.id) <"
                " (SELECT created_at, id FROM batches WHERE id = $2 AND tenant_id = $1))"
                " ORDER BY b.created_at DESC, b.id DESC LIMIT $3",
                tenant_id,
                after,
                limit,
            )
        )
        return [_batch(row) for row in rows]

    async def update(
        self, batch_id: str, changes: dict[str, object], finisher: str, statuses: tuple[str, ...]
    ) -> StoredBatch | None:
        """Sets fields of the batch object if ``finisher`` still runs it and its status is one of ``statuses``; the
        batch as it is then, or None (it was cancelled, or taken over)."""
        row = await self._database.call(
            lambda: self._pool.fetchrow(
                "UPDATE batches b SET batch = b.batch || $2::jsonb WHERE b.id = $1 AND b.finisher = $3"
                " AND b.batch->>'status' = ANY($4::text[])"
                f" RETURNING {_BATCH_COLUMNS}",
                batch_id,
                json.dumps(changes),
                finisher,
                list(statuses),
            )
        )
        return _batch(row) if row is not None else None

    async def cancel(self, tenant_id: str, batch_id: str, at: int) -> StoredBatch | None:
        """Marks a running batch cancelling; the batch then, or None when it was not running."""
        changes = json.dumps({"status": "cancelling", "cancelling_at": at})
        row = await self._database.call(
            lambda: self._pool.fetchrow(
                "UPDATE batches b SET batch = b.batch || $3::jsonb FROM tenants t WHERE t.id = b.tenant_id"
                f" AND b.id = $1 AND b.tenant_id = $2 AND b.batch->>'status' IN ('validating', 'in_progress')"
                f" AND {_BATCH_RETAINED} RETURNING {_BATCH_COLUMNS}",
                batch_id,
                tenant_id,
                changes,
            )
        )
        return _batch(row) if row is not None else None

    async def unfinished(self) -> list[tuple[str, str | None]]:
        """The running batches, with the instance running each."""
        rows = await self._database.call(
            lambda: self._pool.fetch(f"SELECT b.id, b.finisher FROM batches b WHERE {_BATCH_RUNNING}")
        )
        return [(row["id"], row["finisher"]) for row in rows]

    async def claim(self, batch_id: str, finisher: str | None, claimer: str) -> bool:
        """Makes ``claimer`` run a batch ``finisher`` ran; False when it ended or another instance was first."""
        done = await self._database.call(
            lambda: self._pool.execute(
                "UPDATE batches b SET finisher = $3 WHERE b.id = $1 AND b.finisher IS NOT DISTINCT FROM $2"
                f" AND {_BATCH_RUNNING}",
                batch_id,
                finisher,
                claimer,
            )
        )
        return str(done).endswith(" 1")

    async def save_result(self, batch_id: str, result: BatchResult) -> None:
        """Keeps a request's result; one kept already for its line (the line run twice across a takeover) stays."""
        await self.save_results(batch_id, [result])

    async def save_results(self, batch_id: str, results: Sequence[BatchResult]) -> None:
        """Keeps requests' results in one round trip, as ``save_result`` does each (keep them to a page's size)."""
        await self._database.call(
            lambda: self._pool.executemany(
                "INSERT INTO batch_results (batch_id, line, succeeded, result, input_tokens, cached_tokens,"
                " output_tokens, reasoning_tokens) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                [
                    (
                        batch_id,
                        result.line,
                        result.succeeded,
                        result.result,
                        result.input_tokens,
                        result.cached_tokens,
                        result.output_tokens,
                        result.reasoning_tokens,
                    )
                    for result in results
                ],
            )
        )

    async def answered(self, batch_id: str) -> set[int]:
        """The lines of the batch that have their result."""
        rows = await self._database.call(
            lambda: self._pool.fetch("SELECT line FROM batch_results WHERE batch_id = $1", batch_id)
        )
        return {row["line"] for row in rows}

    async def results(self, batch_id: str, after_line: int = 0, limit: int = RESULTS_PAGE) -> list[BatchResult]:
        """The batch's results after line ``after_line``, in line order, ``limit`` of them. A batch's results can be
        hundreds of megabytes: read in one query, they came near a lookup's timeout, and took three times their size
        in memory while its files were written (benchmarks/reports/batch-results-2026-12-07)."""
        rows = await self._database.call(
            lambda: self._pool.fetch(
                "SELECT line, succeeded, result FROM batch_results WHERE batch_id = $1 AND line > $2"
                " ORDER BY line LIMIT $3",
                batch_id,
                after_line,
                limit,
            )
        )
        return [BatchResult(row["line"], row["succeeded"], row["result"]) for row in rows]

    async def sweep(self) -> int:
        """Deletes every batch (with its results) no retention covers any more; returns how many."""
        return await _swept(self._pool, f"DELETE FROM batches WHERE {_past_retention('batches', 'created_at')}")
