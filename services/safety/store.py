"""PostgreSQL adapter: tenant policies, the review queue, reviewers, sessions and the audit trail."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from services.safety.auth import hash_password, new_session_token, token_hash, verify_password
from services.safety.policy import DEFAULT_POLICY, Policy, priority
from shared.contracts import ContentFlagged, utc_now
from shared.outages import DATABASE_FAILURES, Breaker, DependencyUnavailable

DEFAULT_TENANT = "*"

Act = Callable[[dict[str, Any]], Awaitable[tuple[list[str], str | None]]]
# sends a settled item's outcome to a held choice that joined it late (see ReviewStore.add)
Settle = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Filed:
    """Where ReviewStore.add put a flagged item."""

    item_id: int | None  # the item that holds it; None: stored already (a redelivery)
    new: bool  # False: it joined the item of its request's other choices
    settled: bool = False  # that item was decided or expired already, and settle sent its outcome


class PolicyStore:
    """Per-tenant policies with a short in-memory cache (policy edits apply within ``ttl_s``). A read waits at most
    ``timeout_s`` for the database; while it cannot answer, a tenant's policy last read stays in force (policies
    change rarely), and only a tenant whose policy was never read raises DependencyUnavailable: its request is
    refused as retryable, never judged under a policy that may not be the tenant's.

    A request may carry the digest of the policy its producer read (``CompletionRequested.screening_policy``); when the
    one kept here differs, the policy is read again at once, so a policy edit the ingress has seen (it keys the
    response cache) is never judged under the former policy for the rest of ``ttl_s``."""

    def __init__(self, pool: asyncpg.Pool, ttl_s: float = 10.0, timeout_s: float = 2.0) -> None:
        self._pool, self._ttl = pool, ttl_s
        self._database = Breaker("database", timeout_s, max(ttl_s, 1.0), DATABASE_FAILURES)
        self._cache: dict[str, tuple[float, Policy, str | None]] = {}

    async def get(self, tenant_id: str | None, digest: str | None = None) -> Policy:
        """The tenant's policy; ``digest``, when given, is the one its producer read (see the class)."""
        key = tenant_id or DEFAULT_TENANT
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit and now - hit[0] < self._ttl and (digest is None or digest == hit[2]):
            return hit[1]
        # md5 of jsonb's canonical text: the digest the ingress reads with the tenant (services/ingress/adapters.py)
        query = "SELECT tenant_id, policy, md5(policy::text) AS digest FROM safety_policies WHERE tenant_id = ANY($1)"
        try:
            rows = await self._database.call(lambda: self._pool.fetch(query, [key, DEFAULT_TENANT]))
        except DependencyUnavailable:
            if hit is None:
                raise
            return hit[1]
        found = {r["tenant_id"]: r for r in rows}
        row = found.get(key, found.get(DEFAULT_TENANT))
        policy = Policy.model_validate_json(row["policy"]) if row else DEFAULT_POLICY
        self._cache[key] = (now, policy, row["digest"] if row else None)
        return policy

    async def put(self, tenant_id: str, policy: Policy) -> None:
        await self._pool.execute(
            """INSERT INTO safety_policies (tenant_id, policy) VALUES ($1, $2::jsonb)
               ON CONFLICT (tenant_id) DO UPDATE SET policy = EXCLUDED.policy, updated_at = now()""",
            tenant_id,
            policy.model_dump_json(),
        )
        self._cache.pop(tenant_id, None)


@dataclass(frozen=True)
class User:
    username: str
    role: str
    can_unmask: bool


class UserStore:
    def __init__(self, pool: asyncpg.Pool, session_hours: float = 8.0) -> None:
        self._pool, self._session = pool, timedelta(hours=session_hours)

    async def add(self, username: str, password: str, role: str, can_unmask: bool, actor: str) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO safety_users (username, password_hash, role, can_unmask) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (username) DO UPDATE SET password_hash = EXCLUDED.password_hash,
                     role = EXCLUDED.role, can_unmask = EXCLUDED.can_unmask""",
                username,
                hash_password(password),
                role,
                can_unmask,
            )
            await _audit(conn, None, actor, "user_added", {"username": username, "role": role, "unmask": can_unmask})

    async def list(self) -> list[User]:
        rows = await self._pool.fetch("SELECT username, role, can_unmask FROM safety_users ORDER BY username")
        return [User(r["username"], r["role"], r["can_unmask"]) for r in rows]

    async def sign_in(self, username: str, password: str) -> str | None:
        """A new session token, or None when the name or password is wrong."""
        row = await self._pool.fetchrow("SELECT password_hash FROM safety_users WHERE username = $1", username)
        if row is None or not verify_password(password, row["password_hash"]):
            return None
        token = new_session_token()
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM safety_sessions WHERE expires_at < now()")
            await conn.execute(
                "INSERT INTO safety_sessions (token_hash, username, expires_at) VALUES ($1, $2, $3)",
                token_hash(token),
                username,
                utc_now() + self._session,
            )
            await _audit(conn, None, username, "signed_in", {})
        return token

    async def session_user(self, token: str | None) -> User | None:
        if not token:
            return None
        row = await self._pool.fetchrow(
            """SELECT u.username, u.role, u.can_unmask FROM safety_sessions s JOIN safety_users u USING (username)
               WHERE s.token_hash = $1 AND s.expires_at > now()""",
            token_hash(token),
        )
        return User(row["username"], row["role"], row["can_unmask"]) if row else None

    async def sign_out(self, token: str) -> None:
        await self._pool.execute("DELETE FROM safety_sessions WHERE token_hash = $1", token_hash(token))


class ReviewStore:
    def __init__(self, pool: asyncpg.Pool, default_retention_days: int = 30) -> None:
        self._pool, self._default_retention = pool, timedelta(days=default_retention_days)

    async def add(self, flagged: ContentFlagged, review_minutes: int, settle: Settle | None = None) -> Filed:
        """Stores a flagged item once (a redelivery is ignored). The prompt of a choice of a request with n > 1
        (``choice_of``) joins the item of that request's choices flagged alike, if one exists: a held choice is held
        with the others, so one decision releases or refuses them all. A held choice that comes after that item was
        settled (decided or expired) gets the same outcome now: ``settle(item)`` sends it, before the choice is
        recorded, so a failed send leaves it to be stored again on redelivery."""
        if flagged.held_request is not None:
            held = {"requests": [flagged.held_request.model_dump(mode="json")]}
        elif flagged.held_completion is not None:
            delta = flagged.held_delta.model_dump(mode="json") if flagged.held_delta else None
            held = {"completion": flagged.held_completion.model_dump(mode="json"), "delta": delta}
        else:
            held = None
        text = _shown(flagged.text) if flagged.text is not None else None
        text_expires_at = None
        if flagged.retention_days == 0:
            text = None  # the tenant keeps nothing, whatever the producer sent
        elif text is not None:
            days = self._default_retention if flagged.retention_days is None else timedelta(days=flagged.retention_days)
            text_expires_at = flagged.flagged_at + days
        choice_of = flagged.choice_of if flagged.stage == "prompt" else None
        async with self._pool.acquire() as conn, conn.transaction():
            # either unique key may conflict: (request_id, stage) on a redelivery, and (choice_of, stage, action) when
            # another choice of the request was flagged alike first
            item_id = await conn.fetchval(
                """INSERT INTO safety_review_items (request_id, tenant_id, model, stage, action, categories, scores,
                     priority, deadline_at, snippet, text, reply_topic, held, text_expires_at, choice_of, choice_ids)
                   VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11, $12, $13::json, $14, $15, $16)
                   ON CONFLICT DO NOTHING RETURNING id""",
                flagged.request_id,
                flagged.tenant_id,
                flagged.model,
                flagged.stage,
                flagged.action,
                flagged.categories,
                json.dumps(flagged.scores),
                priority(flagged.scores, flagged.action if flagged.action != "block" else "release"),
                flagged.flagged_at + timedelta(minutes=review_minutes),
                _shown(flagged.snippet),
                text,
                flagged.reply_topic,
                json.dumps(held) if held is not None else None,
                text_expires_at,
                choice_of,
                [flagged.request_id] if choice_of is not None else [],
            )
            if item_id is not None:
                await _audit(conn, item_id, "system", "flagged", {"action": flagged.action})
                return Filed(item_id, new=True)
            if choice_of is None:
                return Filed(None, new=False)
            row = await conn.fetchrow(
                """SELECT * FROM safety_review_items WHERE choice_of = $1 AND stage = 'prompt' AND action = $2
                   FOR UPDATE""",
                choice_of,
                flagged.action,
            )
            if row is None or flagged.request_id in row["choice_ids"]:  # the first choice's id is there too
                return Filed(None, new=False)  # a redelivery
            settled = row["status"] in ("decided", "expired")
            joined = json.loads(row["held"]) if row["held"] else None
            if held is not None and joined is not None and not settled:
                joined["requests"] = [*joined.get("requests", ()), *held["requests"]]
            if held is not None and settled and settle is not None:
                await settle(dict(row))
            await conn.execute(
                """UPDATE safety_review_items SET choice_ids = array_append(choice_ids, $2), held = $3::json
                   WHERE id = $1""",
                row["id"],
                flagged.request_id,
                json.dumps(joined) if joined is not None else None,
            )
            detail = {"request_id": flagged.request_id} | ({"settled": row["status"]} if settled and held else {})
            await _audit(conn, row["id"], "system", "choice_joined", detail)
            return Filed(row["id"], new=False, settled=settled and held is not None)

    async def queue(self, limit: int = 100) -> list[dict[str, Any]]:
        """Undecided items, highest priority first, then oldest first."""
        rows = await self._pool.fetch(
            """SELECT id, request_id, tenant_id, model, stage, action, categories, priority, deadline_at, status,
                      claimed_by, created_at, snippet, cardinality(choice_ids) AS choices
               FROM safety_review_items WHERE status IN ('pending', 'claimed')
               ORDER BY priority DESC, created_at ASC LIMIT $1""",
            limit,
        )
        return [dict(r) for r in rows]

    async def get(self, item_id: int) -> dict[str, Any] | None:
        row = await self._pool.fetchrow("SELECT * FROM safety_review_items WHERE id = $1", item_id)
        if row is None:
            return None
        item = dict(row)
        item["scores"] = json.loads(item["scores"])
        item["held"] = json.loads(item["held"]) if item["held"] else None
        return item

    async def audit(self, item_id: int | None = None, limit: int = 200) -> list[dict[str, Any]]:
        if item_id is None:
            rows = await self._pool.fetch("SELECT * FROM safety_audit ORDER BY at DESC, id DESC LIMIT $1", limit)
        else:
            rows = await self._pool.fetch("SELECT * FROM safety_audit WHERE item_id = $1 ORDER BY at, id", item_id)
        return [dict(r) | {"detail": json.loads(r["detail"])} for r in rows]

    async def claim(self, item_id: int, username: str) -> bool:
        """Claims a pending item (or one this reviewer already holds); False when someone else has it or it is
        decided."""
        async with self._pool.acquire() as conn, conn.transaction():
            done = await conn.fetchval(
                """UPDATE safety_review_items SET status = 'claimed', claimed_by = $2, claimed_at = now()
                   WHERE id = $1 AND (status = 'pending' OR (status = 'claimed' AND claimed_by = $2)) RETURNING id""",
                item_id,
                username,
            )
            if done is not None:
                await _audit(conn, item_id, username, "claimed", {})
        return done is not None

    async def decide(self, item_id: int, username: str, verdict: str, note: str, act: Act) -> bool:
        """Records a decision on an item this reviewer claimed. ``act(item)`` sends what the decision releases or
        refuses, before the decision commits (a failed send leaves the item claimed for another try), and returns the
        item's label and what happened to held content. The held content is erased with the decision."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT * FROM safety_review_items WHERE id = $1 AND status = 'claimed' AND claimed_by = $2 FOR UPDATE",
                item_id,
                username,
            )
            if row is None:
                return False
            item = dict(row) | {"held": json.loads(row["held"]) if row["held"] else None}
            labels, outcome = await act(item)
            note = _shown(note)
            await conn.execute(
                """UPDATE safety_review_items SET status = 'decided', decision = $2, labels = $3, note = $4,
                     decided_by = $5, decided_at = now(), held = NULL WHERE id = $1""",
                item_id,
                verdict,
                labels,
                note,
                username,
            )
            await _audit(conn, item_id, username, "decided", {"decision": verdict, "labels": labels, "note": note})
            if outcome:
                await _audit(conn, item_id, "system", outcome, {})
        return True

    async def expire_overdue(self, act: Act, limit: int = 100) -> int:
        """Held items nobody decided by their deadline, one transaction each: ``act(item)`` sends what the tenant's
        policy applies (before the commit, so a failed send leaves the item for the next sweep) and returns what was
        applied and what happened to the held content. The item is marked expired and its held content erased."""
        expired = 0
        async with self._pool.acquire() as conn:
            while expired < limit:
                async with conn.transaction():
                    row = await conn.fetchrow(
                        """SELECT * FROM safety_review_items
                           WHERE held IS NOT NULL AND status IN ('pending', 'claimed') AND deadline_at < now()
                           ORDER BY deadline_at LIMIT 1 FOR UPDATE SKIP LOCKED"""
                    )
                    if row is None:
                        break
                    item = dict(row) | {"held": json.loads(row["held"])}
                    applied, outcome = await act(item)
                    await conn.execute(
                        """UPDATE safety_review_items SET status = 'expired', expired_at = now(), held = NULL
                           WHERE id = $1""",
                        row["id"],
                    )
                    deadline = row["deadline_at"].isoformat()
                    await _audit(conn, row["id"], "system", "expired", {"applied": applied, "deadline": deadline})
                    if outcome:
                        await _audit(conn, row["id"], "system", outcome, {"reason": "review deadline passed"})
                expired += 1
        return expired

    async def purge_texts(self) -> int:
        """Erases retained text whose retention ended (scores, labels, the masked snippet and the audit trail stay)."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """UPDATE safety_review_items SET text = NULL, text_expires_at = NULL
                   WHERE text IS NOT NULL AND text_expires_at < now() RETURNING id"""
            )
            for row in rows:
                await _audit(conn, row["id"], "system", "text_purged", {"reason": "retention ended"})
        return len(rows)

    async def decided(self, since: datetime | None = None) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(
            """SELECT id, request_id, tenant_id, model, stage, action, categories, scores, decision, labels, note,
                      decided_by, decided_at, snippet, text
               FROM safety_review_items WHERE status = 'decided' AND ($1::timestamptz IS NULL OR decided_at >= $1)
               ORDER BY decided_at""",
            since,
        )
        return [dict(r) | {"scores": json.loads(r["scores"])} for r in rows]


def _shown(text: str) -> str:
    """Text as a reviewer reads it, stored as text: U+0000, which PostgreSQL's text refuses, shown as U+FFFD."""
    return text.replace("\x00", "\ufffd")


async def _audit(conn: asyncpg.Connection, item_id: int | None, actor: str, action: str, detail: dict) -> None:  # type: ignore[type-arg]
    await conn.execute(
        "INSERT INTO safety_audit (item_id, actor, action, detail) VALUES ($1, $2, $3, $4::jsonb)",
        item_id,
        actor,
        action,
        json.dumps(detail),
    )
