"""Consumer groups are named after the topic prefix unless set, so runs sharing a Kafka cluster never share groups."""

from __future__ import annotations

import pytest

from services.batcher.config import BatcherSettings
from services.safety.config import SafetySettings
from services.worker.config import WorkerSettings


def test_every_group_follows_the_topic_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_TOPIC_PREFIX", "ferrytest-ab12.")
    safety = SafetySettings()
    assert BatcherSettings().group_id == "ferrytest-ab12-batcher"
    assert WorkerSettings().group_prefix == "ferrytest-ab12-worker."
    assert (safety.group_id, safety.review_group_id) == ("ferrytest-ab12-safety", "ferrytest-ab12-safety-review")


def test_the_default_prefix_keeps_the_batcher_and_worker_groups_of_earlier_releases(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FERRY_TOPIC_PREFIX", raising=False)
    assert (BatcherSettings().group_id, WorkerSettings().group_prefix) == ("ferry-batcher", "ferry-worker.")


def test_a_group_set_explicitly_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_TOPIC_PREFIX", "ferrytest-ab12.")
    monkeypatch.setenv("FERRY_BATCHER_GROUP_ID", "batchers-blue")
    assert BatcherSettings().group_id == "batchers-blue"
