"""The models one worker hosts within its memory budget. A model is loaded on demand (a request for it arrives) or ahead
of demand (a preload command), in the background: the models already loaded keep generating meanwhile. To make room,
the least recently used idle models that are not hot are evicted first (caching.evictions_to_fit). Loads run one at a
time. Each model counts the requests that found it loaded and those that waited for it (the model cache's hit ratio).
"""

from __future__ import annotations

import asyncio
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
from services.worker.variants import VARIANTS
from shared.contracts import LoadedModel, utc_now
from shared.registry import ModelRecord

logger = logging.getLogger(__name__)

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "half": 2, "float": 4}


class ModelUnavailable(Exception):
    """The model cannot be loaded on this worker (not hosted here, not in the registry, too big for the budget next to
    hot or busy models, or its engine failed to start)."""


def estimate_memory_bytes(path: Path, dtype: str, quantization: str | None, kv_cache_bytes: int) -> int:
    """A loaded model's footprint: its weights at the precision they run in, plus the KV cache vLLM reserves for it.
    Weights are counted from the safetensors files and the dtype they are stored in (config.json)."""
    stored = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    config = json.loads((path / "config.json").read_text())
    stored_dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    parameters = stored // _DTYPE_BYTES.get(stored_dtype, 4)
    runtime = 1 if quantization and "int8" in quantization else _DTYPE_BYTES.get(dtype, 4)
    return parameters * runtime + kv_cache_bytes


class Loader(Protocol):
    """Turns a registry record into a running engine, and says how much memory it will take."""

    async def footprint(self, record: ModelRecord) -> int: ...

    async def start(self, record: ModelRecord) -> Engine: ...


@dataclass
class VllmLoader:
    """The real loader: builds the model folder if needed (model_store), then starts vLLM's engine on it."""

    models_dir: Path
    kv_cache_gib: float
    max_num_seqs: int
    variant: str | None
    ensure_model: Callable[[str, str, Path], Path]

    async def _path(self, record: ModelRecord) -> Path:
        return await asyncio.to_thread(self.ensure_model, record.id, record.source, self.models_dir)

    async def footprint(self, record: ModelRecord) -> int:
        variant = VARIANTS.get(self.variant or "fp32")
        path = await self._path(record)
        return estimate_memory_bytes(
            path,
            variant.dtype if variant else "float32",
            variant.quantization if variant else None,
            int(self.kv_cache_gib * GiB),
        )

    async def start(self, record: ModelRecord) -> Engine:
        config = EngineConfig(
            model_id=record.id,
            path=await self._path(record),
            max_model_len=record.max_model_len,
            kv_cache_gib=self.kv_cache_gib,
            max_num_seqs=self.max_num_seqs,
            variant=self.variant,
        )
        return await Engine.start(config)


@dataclass
class Hosted:
    model_id: str
    state: Literal["loading", "ready"]
    loaded: asyncio.Future[Engine]
    memory_bytes: int = 0
    last_used_at: datetime = field(default_factory=utc_now)
    engine: Engine | None = None
    busy: int = 0  # requests holding it (acquired, not released)
    evict_when_idle: str | None = None  # an eviction asked while it was busy: done on the last release


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
        default_variant: str = "fp32",
    ) -> None:
        self.allowed = list(dict.fromkeys(allowed))
        self.budget_bytes = budget_bytes
        self.default_variant = default_variant
        self._loader = loader
        self._registry = registry
        self._tiers = tiers
        self._metrics = metrics
        self._models: dict[str, Hosted] = {}
        self._hits: dict[str, Hits] = {}
        self._load_lock = asyncio.Lock()
        self._released = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def hosts(self, model_id: str) -> bool:
        return model_id in self.allowed

    def engine(self, model_id: str) -> Engine | None:
        """The model's engine if it is loaded and ready."""
        hosted = self._models.get(model_id)
        return hosted.engine if hosted is not None and hosted.state == "ready" else None

    def engines(self) -> list[Engine]:
        return [h.engine for h in self._models.values() if h.engine is not None and h.state == "ready"]

    async def acquire(self, model_id: str) -> Engine:
        """The model's engine for one request, loading it first if needed (the request then counts as having waited
        for a load). The caller must release it once the request ends. Raises ModelUnavailable."""
        hosted = self._models.get(model_id)
        found = hosted is not None and hosted.state == "ready"
        hits = self._hits.setdefault(model_id, Hits())
        if found:
            hits.found_loaded += 1
        else:
            hits.waited_for_load += 1
        self._metrics.arrived(model_id, found)
        while True:
            hosted = self._models.get(model_id) or self._start_loading(model_id)
            engine = await asyncio.shield(hosted.loaded)
            if self._models.get(model_id) is hosted:  # not evicted between its load and now
                hosted.busy += 1
                hosted.last_used_at = utc_now()
                hosted.evict_when_idle = None  # demand came back: keep it
                return engine

    def release(self, model_id: str) -> None:
        hosted = self._models.get(model_id)
        if hosted is None:
            return
        hosted.busy = max(0, hosted.busy - 1)
        hosted.last_used_at = utc_now()
        if not hosted.busy:
            self._released.set()
            if hosted.evict_when_idle:
                self._spawn(self._unload(model_id, hosted.evict_when_idle))

    async def load(self, model_id: str) -> Engine:
        """Loads the model (if it is not loaded) and waits until it is ready, without counting a request."""
        hosted = self._models.get(model_id) or self._start_loading(model_id)
        return await asyncio.shield(hosted.loaded)

    def preload(self, model_id: str) -> bool:
        """Starts loading the model in the background ahead of demand; False if this worker does not host it."""
        if not self.hosts(model_id):
            return False
        if model_id not in self._models:
            self._start_loading(model_id)
        return True

    async def evict(self, model_id: str, reason: str = "requested") -> bool:
        """Unloads the model now, or once its running requests end; False if it is not loaded here."""
        hosted = self._models.get(model_id)
        if hosted is None:
            return False
        if hosted.state != "ready":
            await asyncio.shield(hosted.loaded)
        if hosted.busy:
            logger.info("%s: eviction (%s) deferred until its %d request(s) end", model_id, reason, hosted.busy)
            hosted.evict_when_idle = reason
            return True
        await self._unload(model_id, reason)
        return True

    def report(self) -> list[LoadedModel]:
        """What heartbeats carry: each model held, with its state, footprint, last use and hit counts."""
        return [
            LoadedModel(
                model=model_id,
                variant=hosted.engine.variant if hosted.engine is not None else self.default_variant,
                state=hosted.state,
                memory_bytes=hosted.memory_bytes,
                last_used_at=hosted.last_used_at,
                requests_found_loaded=self._hits.get(model_id, Hits()).found_loaded,
                requests_waited_for_load=self._hits.get(model_id, Hits()).waited_for_load,
            )
            for model_id, hosted in self._models.items()
        ]

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for model_id in list(self._models):
            hosted = self._models.pop(model_id)
            if hosted.engine is not None:
                await hosted.engine.shutdown()

    # ---- loading and evicting -------------------------------------------------------------------------------------

    def _start_loading(self, model_id: str) -> Hosted:
        if not self.hosts(model_id):
            raise ModelUnavailable(f"this worker does not host {model_id!r} (it hosts {', '.join(self.allowed)})")
        hosted = Hosted(
            model_id=model_id,
            state="loading",
            loaded=asyncio.get_running_loop().create_future(),
        )
        hosted.loaded.add_done_callback(lambda f: f.exception())  # read here, so an unawaited failure is not logged
        self._models[model_id] = hosted
        self._spawn(self._load(hosted))
        return hosted

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self, hosted: Hosted) -> None:
        model_id = hosted.model_id
        try:
            record = await self._registry(model_id)
            if record is None:
                raise ModelUnavailable(f"model {model_id!r} is not in the registry (or not enabled)")
            async with self._load_lock:
                hosted.memory_bytes = await self._loader.footprint(record)
                await self._make_room(model_id, hosted.memory_bytes)
                logger.info("loading %s (%.0f MiB)", model_id, hosted.memory_bytes / (1 << 20))
                engine = await self._loader.start(record)
        except Exception as exc:
            self._models.pop(model_id, None)
            failure = exc if isinstance(exc, ModelUnavailable) else ModelUnavailable(f"{model_id} did not load: {exc}")
            logger.warning("%s not loaded: %s", model_id, failure)
            hosted.loaded.set_exception(failure)
            return
        hosted.engine, hosted.state, hosted.last_used_at = engine, "ready", utc_now()
        self._metrics.watch(model_id, engine.stats, hosted.memory_bytes)
        hosted.loaded.set_result(engine)
        logger.info("%s ready in %.1f s", model_id, engine.stats.load_seconds)

    async def _make_room(self, model_id: str, memory_bytes: int) -> None:
        """Evicts what the LRU rule picks so ``memory_bytes`` more fit in the budget. While only busy models stand in
        the way, waits for them to go idle; when hot models do (or the model is larger than the budget), gives up."""
        if self.budget_bytes is None:
            return
        while True:
            tiers = await self._read_tiers()
            residents = [
                Resident(m, h.memory_bytes, tiers.get(m, "cold"), h.last_used_at, busy=h.busy > 0 or h.state != "ready")
                for m, h in self._models.items()
                if m != model_id
            ]
            try:
                victims = evictions_to_fit(residents, memory_bytes, self.budget_bytes)
            except DoesNotFit as exc:
                try:
                    evictions_to_fit([replace(r, busy=False) for r in residents], memory_bytes, self.budget_bytes)
                except DoesNotFit:
                    raise ModelUnavailable(f"{model_id} cannot be loaded on this worker: {exc}") from None
                logger.info("%s waits for busy models to go idle before it fits", model_id)
                self._released.clear()
                try:
                    await asyncio.wait_for(self._released.wait(), timeout=1.0)
                except TimeoutError:
                    pass
                continue
            for victim in victims:
                logger.info("evicting %s (least recently used) to fit %s", victim, model_id)
                await self._unload(victim, "lru")
            return

    async def _read_tiers(self) -> dict[str, Tier]:
        try:
            return await self._tiers()
        except Exception:
            logger.exception("model tiers not read; every model counts as cold")
            return {}

    async def _unload(self, model_id: str, reason: str) -> None:
        hosted = self._models.get(model_id)
        if hosted is None or hosted.engine is None or hosted.busy:
            return
        del self._models[model_id]
        self._metrics.unwatch(model_id, reason)
        await hosted.engine.shutdown()
        logger.info("%s unloaded (%s), %.0f MiB freed", model_id, reason, hosted.memory_bytes / (1 << 20))
