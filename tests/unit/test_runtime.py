"""The garbage collector's metrics and the frozen start-up heap (shared/runtime.py)."""

from __future__ import annotations

import gc
import weakref

from prometheus_client import CollectorRegistry

from shared.runtime import GarbageCollection, freeze_heap


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(GarbageCollection())
    return registry


def test_each_full_collection_is_counted_and_timed_under_its_generation() -> None:
    registry = _registry()

    def sample(name: str, generation: str) -> float:
        value = registry.get_sample_value(name, {"generation": generation})
        assert value is not None
        return value

    full = sample("ferry_gc_pause_seconds_count", "2")
    total = sample("ferry_gc_pause_seconds_sum", "2")
    gc.collect()
    gc.collect()
    assert sample("ferry_gc_pause_seconds_count", "2") == full + 2
    assert sample("ferry_gc_pause_seconds_sum", "2") > total
    assert registry.get_sample_value("ferry_gc_pause_seconds_bucket", {"generation": "2", "le": "+Inf"}) == full + 2
    # a full collection of a test process takes milliseconds, not seconds: the buckets place it below the last bound
    assert registry.get_sample_value("ferry_gc_pause_seconds_bucket", {"generation": "2", "le": "2.5"}) == full + 2


def test_several_registries_share_one_timer_of_the_process() -> None:
    first, second = _registry(), _registry()
    gc.collect()
    counts = [r.get_sample_value("ferry_gc_pause_seconds_count", {"generation": "2"}) for r in (first, second)]
    assert counts[0] == counts[1]
    assert sum(type(c).__name__ == "_CollectionTimer" for c in gc.callbacks) == 1


class _Cycle:
    """An object that refers to itself: only the garbage collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_frozen_objects_are_reported_and_skipped_by_collections_but_garbage_is_not_frozen() -> None:
    registry = _registry()
    kept = [[] for _ in range(10_000)]  # objects the collector tracks
    garbage = weakref.ref(_Cycle())  # unreachable already, freed only by a collection
    try:
        freeze_heap()
        frozen = registry.get_sample_value("ferry_gc_frozen_objects")
        assert frozen == gc.get_freeze_count() >= len(kept)
        assert not any(o is kept for o in gc.get_objects())  # out of every generation the collections walk
        assert garbage() is None
    finally:
        gc.unfreeze()
    assert registry.get_sample_value("ferry_gc_frozen_objects") == 0
