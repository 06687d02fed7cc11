"""Adapters of the scaler: consumer lag and backlog read from Kafka itself, and its tables in PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.scaler.policy import Decision
from services.scaler.signals import TopicBacklog, batch_tokens, extrapolate, request_tokens
from shared.contracts import BatchFormed, CompletionRequested
from shared.kafka import Rejected, decode

logger = logging.getLogger(__name__)


class KafkaLag:
    """End offsets minus a group's committed offsets, and the token weight of what lies between (peeked with a
    group-less consumer, so reading never moves anybody's offsets)."""

    def __init__(self, bootstrap: str, peek_records: int, model_contexts: dict[str, int] | None = None) -> None:
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="ferry-scaler-lag")
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, client_id="ferry-scaler-lag", group_id=None, enable_auto_commit=False
        )
        self._peek_records = peek_records
        self._contexts = dict(model_contexts or {})  # registry max_model_len: a request weighs no more
        self._partitions: dict[str, list[TopicPartition]] = {}

    async def start(self) -> None:
        await self._admin.start()
        await self._consumer.start()

    async def close(self) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def partitions(self, topic: str) -> list[TopicPartition]:
        if topic not in self._partitions:
            [described] = await self._admin.describe_topics([topic])
            found = sorted(p["partition"] for p in described.get("partitions", []))
            if not found:
                return []  # not created yet: ask again next time
            self._partitions[topic] = [TopicPartition(topic, p) for p in found]
        return self._partitions[topic]

    async def end_offset(self, topic: str) -> int:
        """Records ever produced to the topic (the sum of its partitions' end offsets)."""
        tps = await self.partitions(topic)
        return sum((await self._consumer.end_offsets(tps)).values()) if tps else 0

    async def backlog(
        self, group: str, topic: str, kind: type[CompletionRequested] | type[BatchFormed]
    ) -> TopicBacklog:
        tps = await self.partitions(topic)
        if not tps:
            return TopicBacklog(0, 0.0, 0.0)
        ends = await self._consumer.end_offsets(tps)
        committed = await self._admin.list_consumer_group_offsets(group, partitions=tps)
        starts = await self._consumer.beginning_offsets(tps)
        positions = {
            tp: committed[tp].offset if tp in committed and committed[tp].offset >= 0 else starts[tp] for tp in tps
        }
        lag = {tp: max(0, ends[tp] - positions[tp]) for tp in tps}
        total = sum(lag.values())
        peeked = await self._peek({tp: (positions[tp], ends[tp]) for tp in tps if lag[tp]}, kind) if total else []
        requests, tokens = extrapolate(total, peeked)
        return TopicBacklog(total, requests, tokens, {tp.partition: n for tp, n in lag.items()})

    async def _peek(
        self, ranges: dict[TopicPartition, tuple[int, int]], kind: type[CompletionRequested] | type[BatchFormed]
    ) -> list[tuple[int, int]]:
        if self._peek_records <= 0:
            return []
        per_partition = max(1, self._peek_records // len(ranges))
        self._consumer.assign(list(ranges))
        for tp, (start, _) in ranges.items():
            self._consumer.seek(tp, start)
        weights: list[tuple[int, int]] = []
        remaining = {tp: min(per_partition, end - start) for tp, (start, end) in ranges.items()}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while any(n > 0 for n in remaining.values()) and loop.time() < deadline:
            got = await self._consumer.getmany(*[tp for tp, n in remaining.items() if n > 0], timeout_ms=200)
            for tp, records in got.items():
                for record in records[: remaining[tp]]:
                    remaining[tp] -= 1
                    try:
                        message = decode(kind, record)
                    except Rejected:
                        continue  # the batcher or worker dead-letters it; it weighs nothing
                    if isinstance(message, BatchFormed):
                        weights.append(batch_tokens(message, self._contexts))
                    else:
                        weights.append((1, request_tokens(message, self._contexts)))
        return weights


@dataclass(frozen=True)
class DecisionRow:
    model: str
    decided_at: datetime
    policy: str
    tier: str
    action: str
    current: int
    desired: int
    forecast_per_hour: float | None
    reason: str


class ScalerStore:
    """Demand history, forecasts (for their accuracy) and decisions in PostgreSQL (migration 0005)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def add_demand(self, model: str, bucket_start: datetime, requests: int, seconds: int) -> None:
        await self._pool.execute(
            """INSERT INTO scaler_demand (model, bucket_start, bucket_seconds, requests) VALUES ($1, $2, $3, $4)
               ON CONFLICT (model, bucket_start) DO UPDATE SET requests = scaler_demand.requests + EXCLUDED.requests""",
            model,
            bucket_start,
            seconds,
            requests,
        )

    async def demand_history(self, model: str, since: datetime) -> list[tuple[datetime, int, int]]:
        """(hour, requests, seconds observed) per hour since ``since``, oldest first."""
        rows = await self._pool.fetch(
            """SELECT date_trunc('hour', bucket_start) AS hour, sum(requests) AS requests,
                      sum(bucket_seconds) AS seconds
               FROM scaler_demand WHERE model = $1 AND bucket_start >= $2 GROUP BY 1 ORDER BY 1""",
            model,
            since,
        )
        return [(r["hour"], int(r["requests"]), int(r["seconds"])) for r in rows]

    async def add_forecast(self, model: str, bucket_start: datetime, per_hour: float, basis: str) -> None:
        await self._pool.execute(
            """INSERT INTO scaler_forecasts (model, bucket_start, requests_per_hour, basis) VALUES ($1, $2, $3, $4)
               ON CONFLICT (model, bucket_start) DO NOTHING""",
            model,
            bucket_start,
            per_hour,
            basis,
        )

    async def add_decision(self, d: Decision) -> None:
        await self._pool.execute(
            """INSERT INTO scaler_decisions (model, decided_at, policy, tier, action, current_replicas,
                 desired_replicas, forecast_per_hour, reason, signals)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb)""",
            d.model,
            d.at,
            d.policy,
            d.tier,
            d.action,
            d.current,
            d.desired,
            d.forecast_per_hour,
            d.reason,
            json.dumps(d.signals),
        )

    async def prune(self, before: datetime) -> int:
        """Deletes the demand history, forecasts and decisions older than ``before``; returns how many rows."""
        deleted = 0
        async with self._pool.acquire() as connection:
            for table, column in (
                ("scaler_demand", "bucket_start"),
                ("scaler_forecasts", "bucket_start"),
                ("scaler_decisions", "decided_at"),
            ):
                done = await connection.execute(f"DELETE FROM {table} WHERE {column} < $1", before)
                deleted += int(str(done).split()[-1])
        return deleted

    async def decisions(self, model: str, limit: int) -> list[DecisionRow]:
        rows = await self._pool.fetch(
            """SELECT model, decided_at, policy, tier, action, current_replicas, desired_replicas, forecast_per_hour,
                      reason FROM scaler_decisions WHERE model = $1 ORDER BY decided_at DESC, id DESC LIMIT $2""",
            model,
            limit,
        )
        return [
            DecisionRow(
                r["model"],
                r["decided_at"],
                r["policy"],
                r["tier"],
                r["action"],
                r["current_replicas"],
                r["desired_replicas"],
                r["forecast_per_hour"],
                r["reason"],
            )
            for r in rows
        ]

    async def forecast_accuracy(self, model: str, since: datetime) -> tuple[float | None, int]:
        """(WAPE, buckets): sum |forecast - actual| / sum actual over buckets with both a forecast and demand."""
        row = await self._pool.fetchrow(
            """SELECT sum(abs(f.requests_per_hour * d.bucket_seconds / 3600.0 - d.requests)) AS err,
                      sum(d.requests) AS actual, count(*) AS n
               FROM scaler_forecasts f JOIN scaler_demand d USING (model, bucket_start)
               WHERE f.model = $1 AND f.bucket_start >= $2""",
            model,
            since,
        )
        if not row or not row["n"]:
            return None, 0
        return (float(row["err"]) / float(row["actual"]) if row["actual"] else None), int(row["n"])

    async def models_seen(self, since: datetime) -> list[str]:
        rows = await self._pool.fetch(
            "SELECT DISTINCT model FROM scaler_decisions WHERE decided_at >= $1 ORDER BY model", since
        )
        return [r["model"] for r in rows]


def since(now: datetime, days: int) -> datetime:
    return now - timedelta(days=days)
