"""Periodic housekeeping of the review queue, run by the safety service every ``sweep_interval_s``:

- held items nobody decided by their deadline get their tenant policy's ``on_review_expiry``: withhold (the requester
  gets content_blocked saying the review deadline passed) or release (delivered as if approved); the item is marked
  expired in the audit trail;
- retained text whose tenant's retention ended is erased (scores, labels, the masked snippet and the audit stay)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.safety.metrics import SafetyMetrics
from services.safety.review import expiry_deliveries, held_messages
from services.safety.store import PolicyStore, ReviewStore
from services.safety.web import Send, deliver

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sweeper:
    reviews: ReviewStore
    policies: PolicyStore
    send: Send
    screened_topic: Callable[[str], str]
    metrics: SafetyMetrics

    async def sweep(self) -> tuple[int, int]:
        """One pass: (items expired, texts erased)."""

        async def act(item: dict[str, Any]) -> tuple[str, str | None]:
            policy = await self.policies.get(item["tenant_id"])
            applied = policy.on_review_expiry
            sends = expiry_deliveries(
                item["stage"], held_messages(item["held"]), item["request_id"], applied, list(item["categories"])
            )
            await deliver(self.send, sends, item["reply_topic"], self.screened_topic(item["model"]))
            self.metrics.expired.labels(applied).inc()
            logger.info("request %s %s review item expired: %s", item["request_id"], item["stage"], applied)
            return applied, (("released" if applied == "release" else "withheld") if sends else None)

        expired = await self.reviews.expire_overdue(act)
        purged = await self.reviews.purge_texts()
        if purged:
            self.metrics.purged.inc(purged)
            logger.info("erased the retained text of %d review items (retention ended)", purged)
        return expired, purged

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # the next pass tries again; nothing is lost by waiting
                logger.exception("review queue sweep failed")
            await asyncio.sleep(interval_s)
