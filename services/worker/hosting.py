"""The models one worker hosts within its memory budget. A model is loaded on demand (a request for it arrives) or ahead
of demand (a preload command), in the background: the models already loaded keep generating meanwhile. To make room,
the least recently used idle models that are not hot are evicted first (caching.evictions_to_fit). Loads run one at a
time. Each model counts the requests that found it loaded and those that waited for it (the model cache's hit ratio).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol

from services.worker.caching import DoesNotFit, Resident, Tier, evictions_to_fit
from services.worker.engine import Engine, EngineConfig, GiB
from services.worker.metrics import WorkerMetrics
from services.worker.variants import DEFAULT_CPU_VARIANT, VARIANTS, choose_variant, cpu_problems
from shared.contracts import LoadedModel, ModelRequestCounts, utc_now
from shared.registry import ModelRecord
from shared.runtime import freeze_heap

logger = logging.getLogger(__name__)

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "half": 2, "float": 4}


class ModelUnavailable(Exception):
    """The model cannot be loaded on this worker (not hosted here, not in the registry, too big for the budget next to
    hot or busy models, or its engine failed to start)."""


def estimate_memory_bytes(path: Path, dtype: str, quantization: str | None, kv_cache_bytes: int) -> int:
    """A loaded model's footprint: its weights at the precision they run in, plus the KV cache vLLM reserves for it.
    Weights are counted from the safetensors files and the dtype they are stored in (config.json); a checkpoint
    quantized ahead of time runs as stored."""
    stored = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    config = json.loads((path / "config.json").read_text())
    if "quantization_config" in config:
        return stored + kv_cache_bytes
    stored_dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    parameters = stored // _DTYPE_BYTES.get(stored_dtype, 4)
    runtime = 1 if quantization and "int8" in quantization else _DTYPE_BYTES.get(dtype, 4)
    return parameters * runtime + kv_cache_bytes


class Loader(Protocol):
    """Turns a registry record into a running engine of one variant, and says how much memory it will take."""

    async def footprint(self, record: ModelRecord, variant: str) -> int: ...

    async def start(self, record: ModelRecord, variant: str) -> Engine: ...


@dataclass
class VllmLoader:
    """The real loader: builds the model folder if needed (model_store), then starts vLLM's engine on it."""

    models_dir: Path
    kv_cache_gib: float
    max_num_seqs: int
    ensure_model: Callable[[str, str, Path, str | None], Path]  # model_store.ensure_model
    implicit_variant: str | None = None  # a variant that stands for vLLM's own choice (FERRY_WORKER_VARIANT unset)
    cpu_threads: int | None = None  # each model's OpenMP threads on CPU (None: one per core)
    cpu_nice: int = 0  # how far below the services' its engine process's CPU priority is, on CPU
    process_server: bool = True  # engine processes fork from the preloaded server (engine_processes)

    async def _path(self, record: ModelRecord, variant: str) -> Path:
        """The model's folder, or the variant's own when it needs a checkpoint quantized ahead of time."""
        return await asyncio.to_thread(self.ensure_model, record.id, record.source, self.models_dir, variant)

    async def footprint(self, record: ModelRecord, variant: str) -> int:
        known = VARIANTS.get(variant)
        path = await self._path(record, variant)
        return estimate_memory_bytes(
            path,
            known.dtype if known else "float32",
            known.quantization if known else None,
            int(self.kv_cache_gib * GiB),
        )

    async def start(self, record: ModelRecord, variant: str) -> Engine:
        config = EngineConfig(
            model_id=record.id,
            path=await self._path(record, variant),
            max_model_len=record.max_model_len,
            kv_cache_gib=self.kv_cache_gib,
            max_num_seqs=self.max_num_seqs,
            variant=None if variant == self.implicit_variant or variant not in VARIANTS else variant,
            cpu_threads=self.cpu_threads,
            cpu_nice=self.cpu_nice,
            process_server=self.process_server,
            tool_call_parser=record.tool_call_parser,
            reasoning_parser=record.reasoning_parser,
        )
        return await Engine.start(config)


Key = tuple[str, str]  # (model id, variant): each loaded variant of a model is an engine of its own


@dataclass
class Hosted:
    model_id: str
    variant: str
    state: Literal["loading", "ready"]
    loaded: asyncio.Future[Engine]
    memory_bytes: int = 0  # what the budget counts: see ModelHost._load
    last_used_at: datetime = field(default_factory=utc_now)
    engine: Engine | None = None
    busy: int = 0  # requests holding it (acquired, not released)
    evict_when_idle: str | None = None  # an eviction asked while it was busy: done on the last release

    @property
    def name(self) -> str:
        return f"{self.model_id}:{self.variant}"


@dataclass
class Hits:
    found_loaded: int = 0
    waited_for_load: int = 0


class ModelHost:
    def __init__(
        self,
        allowed: list[str],
        loader: Loader,
        registry: Callable[[str], Awaitable[ModelRecord | None]],
        tiers: Callable[[], Awaitable[dict[str, Tier]]],
        metrics: WorkerMetrics,
        budget_bytes: int | None = None,
        default_variant: str = DEFAULT_CPU_VARIANT,
        variants: list[str] | None = None,
    ) -> None:
        self.allowed = list(dict.fromkeys(allowed))
        self.budget_bytes = budget_bytes
        self.default_variant = default_variant
        self.variants = list(dict.fromkeys([default_variant, *(variants or [])]))  # what this worker may load
        self.variant_problems = cpu_problems(())  # what cannot run here: learnt from the first engine
        self.model_defaults: dict[str, str] = {}  # the registry's default variant per model (model_variants.is_default)
        self._loader = loader
        self._registry = registry
        self._tiers = tiers
        self._metrics = metrics
        self._models: dict[Key, Hosted] = {}
        self._hits: dict[Key, Hits] = {}
        self._load_lock = asyncio.Lock()
        self._released = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._starting: Hosted | None = None  # the model whose engine is starting now
        # What the last measured engine took beyond its weights and KV cache (a runtime of its own, buffers): added to
        # the next estimates, so a load makes room for what it will really take.
        self._engine_overhead_bytes = 0

    def hosts(self, model_id: str) -> bool:
        return model_id in self.allowed

    def variant_for(self, model_id: str, wanted: str | None, fallback: bool) -> str:
        """The variant that serves a request wanting ``wanted``: that one when this worker may load it, else the
        worker's default when the request allows a fallback; raises VariantUnavailable with the reason otherwise. A
        request that names none gets the model's default variant from the registry, or the worker's default if this
        worker may not load that one."""
        if wanted is None:
            wanted, fallback = self.model_defaults.get(model_id), True
        return choose_variant(wanted, fallback, self.variants, self.default_variant, self.variant_problems)

    def engine(self, model_id: str, variant: str | None = None) -> Engine | None:
        """The engine of the model's variant if it is loaded and ready."""
        hosted = self._models.get((model_id, variant or self.default_variant))
        return hosted.engine if hosted is not None and hosted.state == "ready" else None

    def engines(self) -> list[Engine]:
        return [h.engine for h in self._models.values() if h.engine is not None and h.state == "ready"]

    async def acquire(self, model_id: str, variant: str | None = None) -> Engine:
        """The engine for one request, loading it first if needed (the request then counts as having waited for a
        load). The caller must release it once the request ends. Raises ModelUnavailable."""
        key = (model_id, variant or self.default_variant)
        hosted = self._models.get(key)
        found = hosted is not None and hosted.state == "ready"
        hits = self._hits.setdefault(key, Hits())
        if found:
            hits.found_loaded += 1
        else:
            hits.waited_for_load += 1
        self._metrics.arrived(model_id, found)
        while True:
            hosted = self._models.get(key) or self._start_loading(key)
            engine = await asyncio.shield(hosted.loaded)
            if self._models.get(key) is hosted:  # not evicted between its load and now
                hosted.busy += 1
                hosted.last_used_at = utc_now()
                hosted.evict_when_idle = None  # demand came back: keep it
                return engine

    def release(self, model_id: str, variant: str | None = None) -> None:
        key = (model_id, variant or self.default_variant)
        hosted = self._models.get(key)
        if hosted is None:
            return
        hosted.busy = max(0, hosted.busy - 1)
        hosted.last_used_at = utc_now()
        if not hosted.busy:
            self._released.set()
            if hosted.evict_when_idle:
                self._spawn(self._unload(key, hosted.evict_when_idle))

    async def load(self, model_id: str, variant: str | None = None) -> Engine:
        """Loads the model (if it is not loaded) and waits until it is ready, without counting a request."""
        key = (model_id, variant or self.default_variant)
        hosted = self._models.get(key) or self._start_loading(key)
        return await asyncio.shield(hosted.loaded)

    def preload(self, model_id: str, variant: str | None = None) -> bool:
        """Starts loading the model in the background ahead of demand; False if this worker does not host it or may
        not load that variant."""
        key = (model_id, variant or self.variant_for(model_id, None, fallback=True))
        if not self.hosts(model_id) or key[1] not in self.variants:
            return False
        if key not in self._models:
            self._start_loading(key)
        return True

    async def evict(self, model_id: str, reason: str = "requested") -> bool:
        """Unloads every variant of the model now, or once its running requests end; False if none is loaded here."""
        keys = [k for k in self._models if k[0] == model_id]
        for key in keys:
            hosted = self._models[key]
            if hosted.state != "ready":
                with contextlib.suppress(ModelUnavailable):
                    await asyncio.shield(hosted.loaded)
            if hosted.busy:
                logger.info("%s: eviction (%s) deferred until its %d request(s) end", hosted.name, reason, hosted.busy)
                hosted.evict_when_idle = reason
            else:
                await self._unload(key, reason)
        return bool(keys)

    def report(self) -> list[LoadedModel]:
        """What heartbeats carry: each model held, with its state, footprint, last use and hit counts."""
        return [
            LoadedModel(
                model=hosted.model_id,
                variant=hosted.engine.variant if hosted.engine is not None else hosted.variant,
                state=hosted.state,
                memory_bytes=hosted.memory_bytes,
                measured_memory_bytes=(hosted.engine.stats.load_memory_bytes or None) if hosted.engine else None,
                last_used_at=hosted.last_used_at,
                requests_found_loaded=self._hits.get(key, Hits()).found_loaded,
                requests_waited_for_load=self._hits.get(key, Hits()).waited_for_load,
            )
            for key, hosted in self._models.items()
        ]

    def request_counts(self) -> list[ModelRequestCounts]:
        """Model cache hits and misses of every model variant asked for since start, evicted ones included."""
        return [
            ModelRequestCounts(
                model=model_id,
                variant=variant,
                requests_found_loaded=hits.found_loaded,
                requests_waited_for_load=hits.waited_for_load,
            )
            for (model_id, variant), hits in self._hits.items()
        ]

    async def shutdown(self) -> None:
        # An engine that is starting in its thread cannot be stopped half-way: wait for it, so its EngineCore child is
        # shut down below rather than left running. Loads not started yet are cancelled.
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._starting.loaded), timeout=120)
        for task in list(self._tasks):
            task.cancel()
        for key in list(self._models):
            hosted = self._models.pop(key)
            if hosted.engine is not None:
                await hosted.engine.shutdown()

    # ---- loading and evicting -------------------------------------------------------------------------------------

    def _start_loading(self, key: Key) -> Hosted:
        model_id, variant = key
        if not self.hosts(model_id):
            raise ModelUnavailable(f"this worker does not host {model_id!r} (it hosts {', '.join(self.allowed)})")
        hosted = Hosted(
            model_id=model_id, variant=variant, state="loading", loaded=asyncio.get_running_loop().create_future()
        )
        hosted.loaded.add_done_callback(lambda f: f.exception())  # read here, so an unawaited failure is not logged
        self._models[key] = hosted
        self._spawn(self._load(key, hosted))
        return hosted

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self, key: Key, hosted: Hosted) -> None:
        model_id, variant = key
        try:
            record = await self._registry(model_id)
            if record is None:
                raise ModelUnavailable(f"model {model_id!r} is not in the registry (or not enabled)")
            async with self._load_lock:
                estimate = await self._loader.footprint(record, variant)
                hosted.memory_bytes = estimate + self._engine_overhead_bytes
                await self._make_room(key, hosted.memory_bytes)
                logger.info("loading %s (%s, %.0f MiB)", model_id, variant, hosted.memory_bytes / (1 << 20))
                self._starting = hosted
                try:
                    engine = await self._loader.start(record, variant)
                finally:
                    self._starting = None
        except Exception as exc:
            self._models.pop(key, None)
            failure = exc if isinstance(exc, ModelUnavailable) else ModelUnavailable(f"{model_id} did not load: {exc}")
            logger.warning("%s not loaded: %s", hosted.name, failure)
            hosted.loaded.set_exception(failure)
            return
        hosted.engine, hosted.state, hosted.last_used_at = engine, "ready", utc_now()
        self.variant_problems = engine.variant_problems
        made_room_for = hosted.memory_bytes
        measured = engine.stats.load_memory_bytes
        if measured:
            # from now on the budget counts what it took (never less than its weights and KV cache)
            hosted.memory_bytes = max(estimate, measured)
            self._engine_overhead_bytes = max(0, measured - estimate)
        self._metrics.watch(self._label(key), engine.stats, hosted.memory_bytes)
        freeze_heap()  # the engine's front end and tokenizer live until it is unloaded: out of every collection
        hosted.loaded.set_result(engine)
        logger.info(
            "%s ready in %.1f s; weights and KV cache %.0f MiB, made room for %.0f MiB, took %s",
            hosted.name,
            engine.stats.load_seconds,
            estimate / (1 << 20),
            made_room_for / (1 << 20),
            f"{measured / (1 << 20):.0f} MiB" if measured else "(not measured)",
        )
        if hosted.memory_bytes > made_room_for and self.budget_bytes is not None:
            self._spawn(self._fit_after_load(key, hosted))

    def _label(self, key: Key) -> str:
        """The model label of a loaded engine's gauges: the model id, with the variant when it is not the default."""
        return key[0] if key[1] == self.default_variant else f"{key[0]}:{key[1]}"

    async def _make_room(self, key: Key, memory_bytes: int) -> None:
        """Evicts what the LRU rule picks so ``memory_bytes`` more fit in the budget. While only busy models stand in
        the way, waits for them to go idle; when hot models do (or the model is larger than the budget), gives up."""
        if self.budget_bytes is None:
            return
        while True:
            tiers = await self._read_tiers()
            residents = [
                Resident(
                    h.name, h.memory_bytes, tiers.get(k[0], "cold"), h.last_used_at, h.busy > 0 or h.state != "ready"
                )
                for k, h in self._models.items()
                if k != key
            ]
            try:
                victims = evictions_to_fit(residents, memory_bytes, self.budget_bytes)
            except DoesNotFit as exc:
                try:
                    evictions_to_fit([replace(r, busy=False) for r in residents], memory_bytes, self.budget_bytes)
                except DoesNotFit:
                    raise ModelUnavailable(f"{key[0]} cannot be loaded on this worker: {exc}") from None
                logger.info("%s waits for busy models to go idle before it fits", key[0])
                self._released.clear()
                try:
                    await asyncio.wait_for(self._released.wait(), timeout=1.0)
                except TimeoutError:
                    pass
                continue
            by_name = {h.name: k for k, h in self._models.items()}
            for victim in victims:
                logger.info("evicting %s (least recently used) to fit %s", by_name[victim][0], key[0])
                await self._unload(by_name[victim], "lru")
            return

    async def _fit_after_load(self, key: Key, hosted: Hosted) -> None:
        """A model that measured larger than its estimate may have pushed the worker over its budget: evict what the
        LRU rule picks to get back under it (waiting for busy models like a load does), or say it cannot."""
        async with self._load_lock:
            if self._models.get(key) is not hosted:
                return
            try:
                await self._make_room(key, hosted.memory_bytes)
            except ModelUnavailable as exc:
                logger.warning("%s measured larger than estimated and the worker is over its budget: %s", key[0], exc)

    async def _read_tiers(self) -> dict[str, Tier]:
        try:
            return await self._tiers()
        except Exception:
            logger.exception("model tiers not read; every model counts as cold")
            return {}

    async def _unload(self, key: Key, reason: str) -> None:
        hosted = self._models.get(key)
        if hosted is None or hosted.engine is None or hosted.busy:
            return
        del self._models[key]
        self._metrics.unwatch(self._label(key), reason)
        await hosted.engine.shutdown()
        logger.info("%s unloaded (%s), %.0f MiB freed", hosted.name, reason, hosted.memory_bytes / (1 << 20))
