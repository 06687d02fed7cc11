"""Which offsets may be committed: per partition, up to the lowest record still held (not yet durably handed on)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable


class OffsetLedger:
    """Records read but not resolved (held in memory, or being published) pin their partition's commit point."""

    def __init__(self) -> None:
        self._pending: dict[Hashable, set[int]] = {}
        self._next: dict[Hashable, int] = {}
        self._committed: dict[Hashable, int] = {}

    def read(self, partition: Hashable, offset: int) -> None:
        self._pending.setdefault(partition, set()).add(offset)
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)

    def resolved(self, partition: Hashable, offset: int) -> None:
        self._pending.get(partition, set()).discard(offset)

    def held(self, partition: Hashable) -> int:
        return len(self._pending.get(partition, ()))

    def commit_points(self) -> dict[Hashable, int]:
        """Offsets to commit now (the next record to read after a restart), only where they moved."""
        points = {}
        for partition, nxt in self._next.items():
            pending = self._pending.get(partition)
            point = min(pending) if pending else nxt
            if self._committed.get(partition) != point:
                points[partition] = point
        return points

    def committed(self, points: dict[Hashable, int]) -> None:
        self._committed.update(points)

    def forget(self, partitions: Iterable[Hashable]) -> None:
        for partition in partitions:
            self._pending.pop(partition, None)
            self._next.pop(partition, None)
            self._committed.pop(partition, None)
