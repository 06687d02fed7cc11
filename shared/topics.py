"""Topic names. Every name starts with a configurable prefix so that several deployments (or a test run) can share one
Kafka cluster without seeing each other's traffic."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNSAFE = re.compile(r"[^a-zA-Z0-9._-]")


def topic_safe(name: str) -> str:
    """Kafka topic names allow only ``[a-zA-Z0-9._-]``; anything else becomes ``-``."""
    return _UNSAFE.sub("-", name)


@dataclass(frozen=True)
class Topics:
    prefix: str = "ferry."

    def requests(self, model: str) -> str:
        """Where CompletionRequested for ``model`` is produced (by the ingress or any internal system)."""
        return f"{self.prefix}requests.{topic_safe(model)}"

    def screened(self, model: str) -> str:
        """Where the safety service forwards CompletionRequested for ``model`` once its prompt passed screening; the
        batcher reads this topic, so every prompt is screened whoever produced it."""
        return f"{self.prefix}screened.{topic_safe(model)}"

    def batches(self, model: str) -> str:
        """Where the batcher hands BatchFormed to ``model``'s worker group."""
        return f"{self.prefix}batches.{topic_safe(model)}"

    def replies(self, consumer: str) -> str:
        """A reply topic owned by one consumer (an ingress instance, or an internal system)."""
        return f"{self.prefix}replies.{topic_safe(consumer)}"

    @property
    def cancellations(self) -> str:
        """Where RequestCancelled goes; every worker and batcher reads all of it."""
        return f"{self.prefix}cancellations"

    @property
    def worker_status(self) -> str:
        """Where workers publish WorkerStatusReported heartbeats."""
        return f"{self.prefix}worker-status"

    @property
    def queue_status(self) -> str:
        """Where batchers publish QueueDepthReported per model."""
        return f"{self.prefix}queue-status"

    @property
    def worker_control(self) -> str:
        """Where ModelPreloadRequested and ModelEvictionRequested go to workers."""
        return f"{self.prefix}worker-control"

    @property
    def safety_flagged(self) -> str:
        """Where ContentFlagged goes (from the safety stage and from workers' output screening) for human review."""
        return f"{self.prefix}safety.flagged"

    @property
    def moderations(self) -> str:
        """Where ModerationRequested goes (texts to judge, nothing to generate); the safety service reads it."""
        return f"{self.prefix}moderations"

    @property
    def dead_letter(self) -> str:
        """Where records that cannot be processed are parked, with the reason."""
        return f"{self.prefix}dead-letter"
