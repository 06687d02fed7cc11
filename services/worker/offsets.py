"""Which offsets of the batch topic may be committed: at-least-once delivery with consumption decoupled from generation.

A record (one batch) is done once every request in it has published its final event. Per partition the commit point is
the first record that is not done yet, or one past the last record taken: a worker that dies loses nothing that was not
committed, and never commits past a request that is still generating. Pure logic: no Kafka client here."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

P = TypeVar("P")  # a partition (aiokafka's TopicPartition in the worker; anything hashable in tests)


@dataclass
class _Partition:
    outstanding: dict[int, set[str]] = field(default_factory=dict)  # offset -> requests not finished yet (in order)
    next_offset: int | None = None  # one past the last record taken
    committed: int | None = None  # the last commit point handed out


class OffsetTracker(Generic[P]):
    def __init__(self) -> None:
        self._partitions: dict[P, _Partition] = {}
        self._waiting_on: dict[str, set[tuple[P, int]]] = {}

    def taken(self, partition: P, offset: int, request_ids: list[str]) -> None:
        """A record was read; it is done once each of ``request_ids`` finished (at once if there are none)."""
        state = self._partitions.setdefault(partition, _Partition())
        if state.next_offset is not None and offset < state.next_offset:
            return  # read again after a seek: already accounted for
        state.next_offset = offset + 1
        pending = set(request_ids)
        if pending:
            state.outstanding[offset] = pending
            for request_id in pending:
                self._waiting_on.setdefault(request_id, set()).add((partition, offset))

    def finished(self, request_id: str) -> None:
        """A request published its final event: every record that carried it is one request closer to done."""
        for partition, offset in self._waiting_on.pop(request_id, ()):
            state = self._partitions.get(partition)
            if state is None or offset not in state.outstanding:
                continue
            state.outstanding[offset].discard(request_id)
            if not state.outstanding[offset]:
                del state.outstanding[offset]

    def commit_point(self, partition: P) -> int | None:
        """The offset to commit for ``partition`` (the next record a successor must read), if any record was taken."""
        state = self._partitions.get(partition)
        if state is None or state.next_offset is None:
            return None
        return next(iter(state.outstanding), state.next_offset)

    def due(self) -> dict[P, int]:
        """Commit points that moved since they were last handed out; marks them handed out."""
        moved: dict[P, int] = {}
        for partition, state in self._partitions.items():
            point = self.commit_point(partition)
            if point is not None and point != state.committed:
                moved[partition] = point
                state.committed = point
        return moved

    def failed(self, points: dict[P, int]) -> None:
        """Commits of ``points`` did not go through: hand them out again next time."""
        for partition, point in points.items():
            state = self._partitions.get(partition)
            if state is not None and state.committed == point:
                state.committed = None

    def forget(self, partitions: set[P]) -> dict[P, int]:
        """Partitions were revoked: returns their last commit points (only those that moved) and stops tracking them.
        Requests still generating from them may finish; their records are read again by the partition's next owner."""
        last: dict[P, int] = {}
        for partition in partitions:
            point = self.commit_point(partition)
            state = self._partitions.pop(partition, None)
            if state is None:
                continue
            if point is not None and point != state.committed:
                last[partition] = point
            for offset, request_ids in state.outstanding.items():
                for request_id in request_ids:
                    waiting = self._waiting_on.get(request_id)
                    if waiting is not None:
                        waiting.discard((partition, offset))
                        if not waiting:
                            del self._waiting_on[request_id]
        return last

    def unfinished(self) -> int:
        """Records taken whose requests have not all finished."""
        return sum(len(s.outstanding) for s in self._partitions.values())


class RecentIds:
    """A bounded set of request ids, oldest dropped first: requests this worker already finished (a redelivered copy
    is not generated again) or cancellations that arrived before their request."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[str, str] = OrderedDict()

    def add(self, request_id: str, value: str = "") -> None:
        self._ids[request_id] = value
        self._ids.move_to_end(request_id)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)

    def get(self, request_id: str) -> str | None:
        return self._ids.get(request_id)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._ids
