"""The worker's model host with a fake loader (no vLLM): loads in the background, LRU eviction within the budget, hot
models kept, busy models waited for, and the found-loaded / waited-for-load counts."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry

from services.worker.caching import Tier
from services.worker.engine import EngineStats
from services.worker.hosting import ModelHost, ModelUnavailable
from services.worker.metrics import WorkerMetrics
from services.worker.variants import VariantUnavailable
from shared.registry import ModelRecord

MiB = 1 << 20


@dataclass
class FakeEngine:
    model: str
    stats: EngineStats = field(default_factory=EngineStats)
    variant: str = "fp32"
    stopped: bool = False
    on_cpu: bool = True
    variant_problems: dict[str, str] = field(default_factory=dict)

    async def shutdown(self) -> None:
        self.stopped = True


@dataclass
class FakeLoader:
    sizes: dict[str, int]
    gates: dict[str, asyncio.Event] = field(default_factory=dict)  # a load waits for its gate when it has one
    measured: dict[str, int] = field(default_factory=dict)  # what an engine's start measures (none: not measured)
    started: list[str] = field(default_factory=list)

    async def footprint(self, record: ModelRecord, variant: str) -> int:
        return self.sizes[record.id] // (2 if variant == "int8" else 1)

    async def start(self, record: ModelRecord, variant: str) -> FakeEngine:
        self.started.append(record.id)
        if record.id in self.gates:
            await self.gates[record.id].wait()
        return FakeEngine(record.id, EngineStats(load_memory_bytes=self.measured.get(record.id, 0)), variant=variant)


def host(loader: FakeLoader, budget: int | None, tiers: dict[str, Tier] | None = None) -> ModelHost:
    async def registry(model_id: str) -> ModelRecord | None:
        return ModelRecord(id=model_id, source="fake", version="1", max_model_len=64) if model_id != "gone" else None

    async def read_tiers() -> dict[str, Tier]:
        return dict(tiers or {})

    return ModelHost(
        allowed=list(loader.sizes) + ["gone"],
        loader=loader,  # type: ignore[arg-type]
        registry=registry,
        tiers=read_tiers,
        metrics=WorkerMetrics(CollectorRegistry()),
        budget_bytes=budget,
        variants=["int8"],
    )


def held(h: ModelHost) -> dict[str, str]:
    return {m.model: m.state for m in h.report()}


async def test_a_request_waits_for_a_load_once_then_finds_the_model_loaded() -> None:
    h = host(FakeLoader({"a": 100 * MiB}), budget=None)
    await h.acquire("a")
    h.release("a")
    await h.acquire("a")
    h.release("a")
    (a,) = h.report()
    assert (a.model, a.state, a.memory_bytes) == ("a", "ready", 100 * MiB)
    assert (a.requests_found_loaded, a.requests_waited_for_load) == (1, 1)


async def test_loaded_models_serve_while_another_loads() -> None:
    loader = FakeLoader({"a": 100 * MiB, "b": 100 * MiB}, gates={"b": asyncio.Event()})
    h = host(loader, budget=None)
    await h.load("a")
    waiting = asyncio.create_task(h.acquire("b"))
    await asyncio.sleep(0)
    assert held(h) == {"a": "ready", "b": "loading"}
    engine = await asyncio.wait_for(h.acquire("a"), timeout=1)  # not held up by b's load
    assert engine.model == "a"  # type: ignore[attr-defined]
    loader.gates["b"].set()
    assert (await waiting).model == "b"  # type: ignore[attr-defined]


async def test_the_least_recently_used_warm_model_is_evicted_and_hot_ones_stay() -> None:
    loader = FakeLoader({"hot": 100 * MiB, "a": 100 * MiB, "b": 100 * MiB, "c": 100 * MiB})
    h = host(loader, budget=350 * MiB, tiers={"hot": "hot", "a": "warm", "b": "warm"})
    for model in ("hot", "a", "b", "a"):  # "hot" is the oldest, then b, then a
        await h.acquire(model)
        h.release(model)
        await asyncio.sleep(0.001)
    await h.acquire("c")
    assert held(h) == {"hot": "ready", "a": "ready", "c": "ready"}


async def test_the_budget_counts_a_model_s_measured_memory_when_it_is_larger_than_the_estimate() -> None:
    loader = FakeLoader({"a": 100 * MiB, "b": 100 * MiB}, measured={"a": 60 * MiB, "b": 180 * MiB})
    h = host(loader, budget=None)
    await h.load("a")
    await h.load("b")
    reported = {m.model: (m.memory_bytes, m.measured_memory_bytes) for m in h.report()}
    assert reported == {"a": (100 * MiB, 60 * MiB), "b": (180 * MiB, 180 * MiB)}


async def test_a_model_measured_larger_than_estimated_evicts_the_lru_one_to_stay_within_the_budget() -> None:
    # the estimates (100 + 100) fit in 250 MiB; b measures 180 MiB once loaded, so a (idle, least recent) must go
    loader = FakeLoader({"a": 100 * MiB, "b": 100 * MiB}, measured={"b": 180 * MiB})
    h = host(loader, budget=250 * MiB, tiers={"a": "warm"})
    await h.load("a")
    await h.load("b")
    for _ in range(100):
        if "a" not in held(h):
            break
        await asyncio.sleep(0.01)
    assert held(h) == {"b": "ready"}


async def test_a_load_makes_room_for_what_the_last_engine_took_beyond_its_estimate() -> None:
    # a took 80 MiB more than its weights and KV cache; b's load makes room for that much more too (180 MiB), which
    # needs a out of a 300 MiB budget, although b's own estimate (100 MiB) would have fitted next to a
    loader = FakeLoader({"a": 100 * MiB, "b": 100 * MiB}, measured={"a": 180 * MiB, "b": 100 * MiB})
    h = host(loader, budget=300 * MiB, tiers={"a": "warm"})
    await h.load("a")
    await h.load("b")
    assert held(h) == {"b": "ready"}
    (b,) = h.report()
    assert (b.memory_bytes, b.measured_memory_bytes) == (100 * MiB, 100 * MiB)


async def test_a_load_waits_for_a_busy_model_to_go_idle_before_evicting_it() -> None:
    h = host(FakeLoader({"a": 100 * MiB, "b": 100 * MiB}), budget=150 * MiB)
    await h.acquire("a")  # a request is generating on a
    loading = asyncio.create_task(h.acquire("b"))
    await asyncio.sleep(0.05)
    assert not loading.done() and held(h)["a"] == "ready"
    h.release("a")
    await asyncio.wait_for(loading, timeout=2)
    assert held(h) == {"b": "ready"}


async def test_a_model_that_only_fits_by_evicting_hot_models_is_refused() -> None:
    h = host(FakeLoader({"a": 100 * MiB, "b": 100 * MiB, "big": 500 * MiB}), budget=150 * MiB, tiers={"a": "hot"})
    await h.load("a")
    with pytest.raises(ModelUnavailable, match="hot"):
        await h.acquire("b")
    with pytest.raises(ModelUnavailable):
        await h.acquire("big")
    with pytest.raises(ModelUnavailable, match="registry"):
        await h.acquire("gone")
    assert held(h) == {"a": "ready"}


async def test_an_eviction_asked_while_busy_happens_when_the_model_goes_idle() -> None:
    h = host(FakeLoader({"a": 100 * MiB}), budget=None)
    engine = await h.acquire("a")
    assert await h.evict("a")
    assert held(h) == {"a": "ready"}
    h.release("a")
    await asyncio.sleep(0.01)
    assert held(h) == {} and engine.stopped  # type: ignore[attr-defined]
    assert not await h.evict("a")
    assert h.preload("a") and not h.preload("elsewhere")
    await h.load("a")
    assert held(h) == {"a": "ready"}


async def test_another_variant_of_a_model_is_an_engine_of_its_own() -> None:
    h = host(FakeLoader({"a": 100 * MiB}), budget=None)
    assert h.variant_for("a", None, fallback=False) == "fp32"
    assert h.variant_for("a", "int8", fallback=False) == "int8"
    assert h.variant_for("a", "fp16", fallback=True) == "fp32"
    with pytest.raises(VariantUnavailable, match="not loaded on this worker"):
        h.variant_for("a", "fp16", fallback=False)
    with pytest.raises(VariantUnavailable, match="cannot run on this hardware"):
        h.variant_for("a", "fp8", fallback=False)
    await h.acquire("a")
    engine = await h.acquire("a", "int8")
    assert engine.variant == "int8"  # type: ignore[attr-defined]
    assert sorted((m.model, m.variant, m.memory_bytes) for m in h.report()) == [
        ("a", "fp32", 100 * MiB),
        ("a", "int8", 50 * MiB),
    ]
    h.release("a")
    h.release("a", "int8")
    assert await h.evict("a")
    assert h.report() == []


async def test_shutdown_waits_for_an_engine_that_is_starting_and_stops_it() -> None:
    loader = FakeLoader({"a": 100 * MiB, "b": 100 * MiB}, gates={"b": asyncio.Event()})
    h = host(loader, budget=None)
    a = await h.load("a")
    h.preload("b")
    await asyncio.sleep(0.01)
    assert loader.started == ["a", "b"]
    closing = asyncio.create_task(h.shutdown())
    await asyncio.sleep(0.01)
    assert not closing.done()
    loader.gates["b"].set()
    await asyncio.wait_for(closing, timeout=1)
    assert a.stopped and h.report() == []  # type: ignore[attr-defined]


def test_a_request_without_a_variant_gets_the_model_s_default_from_the_registry_when_this_worker_may_load_it() -> None:
    h = host(FakeLoader({"a": 100 * MiB, "b": 100 * MiB, "c": 100 * MiB}), budget=None)
    h.model_defaults = {"a": "int8", "b": "fp16"}  # this worker may load fp32 and int8, not fp16
    assert h.variant_for("a", None, fallback=False) == "int8"
    assert h.variant_for("b", None, fallback=False) == "fp32"  # not refused: the request did not ask for fp16
    assert h.variant_for("c", None, fallback=False) == "fp32"
    assert h.variant_for("a", "fp32", fallback=False) == "fp32"  # a variant asked for wins over the default
