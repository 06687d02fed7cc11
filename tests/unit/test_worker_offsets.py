from __future__ import annotations

from services.worker.offsets import OffsetTracker, RecentIds


def test_commit_point_waits_for_every_request_of_the_earliest_unfinished_batch() -> None:
    tracker: OffsetTracker[int] = OffsetTracker()
    tracker.taken(0, 10, ["a", "b"])
    tracker.taken(0, 11, ["c"])
    assert tracker.commit_point(0) == 10
    tracker.finished("c")  # a later batch finishing first does not move the commit point
    assert tracker.commit_point(0) == 10
    tracker.finished("a")
    assert tracker.commit_point(0) == 10
    tracker.finished("b")
    assert tracker.commit_point(0) == 12
    assert tracker.unfinished() == 0


def test_partitions_are_independent_and_due_reports_only_moves() -> None:
    tracker: OffsetTracker[int] = OffsetTracker()
    tracker.taken(0, 5, ["a"])
    tracker.taken(1, 7, ["b"])
    assert tracker.due() == {0: 5, 1: 7}
    assert tracker.due() == {}
    tracker.finished("b")
    assert tracker.due() == {1: 8}
    assert tracker.commit_point(0) == 5
    tracker.failed({1: 8})  # the commit did not go through
    assert tracker.due() == {1: 8}


def test_records_without_requests_are_done_at_once_and_gaps_in_offsets_are_skipped() -> None:
    tracker: OffsetTracker[int] = OffsetTracker()
    tracker.taken(0, 3, [])  # a dead-lettered record
    assert tracker.commit_point(0) == 4
    tracker.taken(0, 9, ["a"])  # offsets 4..8 were transaction markers or compacted away
    tracker.finished("a")
    assert tracker.commit_point(0) == 10


def test_a_request_redelivered_while_running_holds_both_records_until_it_finishes() -> None:
    tracker: OffsetTracker[int] = OffsetTracker()
    tracker.taken(0, 1, ["a"])
    tracker.forget({0})  # revoked, then assigned back: the record is read again
    tracker.taken(0, 1, ["a"])
    tracker.taken(0, 2, ["b"])
    tracker.finished("b")
    assert tracker.commit_point(0) == 1
    tracker.finished("a")
    assert tracker.commit_point(0) == 3


def test_forget_hands_back_the_last_commit_point_and_drops_the_partition() -> None:
    tracker: OffsetTracker[int] = OffsetTracker()
    tracker.taken(0, 1, ["a"])
    tracker.taken(0, 2, ["b"])
    tracker.taken(1, 1, [])
    tracker.finished("a")
    assert tracker.forget({0}) == {0: 2}
    assert tracker.due() == {1: 2}  # other partitions keep their own commit points
    assert tracker.commit_point(0) is None
    tracker.finished("b")  # the request finished after the revocation: nothing to commit any more
    assert tracker.due() == {}


def test_a_record_seen_again_after_a_seek_is_not_counted_twice() -> None:
    tracker: OffsetTracker[int] = OffsetTracker()
    tracker.taken(0, 1, ["a"])
    tracker.taken(0, 2, ["b"])
    tracker.taken(0, 1, ["a"])
    tracker.finished("a")
    tracker.finished("b")
    assert tracker.commit_point(0) == 3


def test_recent_ids_forget_the_oldest_first() -> None:
    recent = RecentIds(capacity=2)
    recent.add("a", "x")
    recent.add("b")
    recent.add("a", "y")  # refreshed: now the newest
    recent.add("c")
    assert "b" not in recent
    assert recent.get("a") == "y"
    assert "c" in recent
