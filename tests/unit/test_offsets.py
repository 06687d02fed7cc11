from __future__ import annotations

from services.batcher.offsets import OffsetLedger


def test_commit_point_stops_at_the_lowest_record_still_held() -> None:
    ledger = OffsetLedger()
    for offset in (10, 11, 12):
        ledger.read("p0", offset)
    ledger.read("p1", 5)
    ledger.resolved("p0", 10)
    ledger.resolved("p0", 12)
    ledger.resolved("p1", 5)
    assert ledger.commit_points() == {"p0": 11, "p1": 6}
    ledger.committed({"p0": 11, "p1": 6})
    assert ledger.commit_points() == {}
    ledger.resolved("p0", 11)
    assert ledger.commit_points() == {"p0": 13}


def test_nothing_read_nothing_to_commit_and_forgotten_partitions_are_not_committed() -> None:
    ledger = OffsetLedger()
    assert ledger.commit_points() == {}
    ledger.read("p0", 3)
    assert ledger.commit_points() == {"p0": 3}
    ledger.forget(["p0"])
    assert ledger.commit_points() == {}
