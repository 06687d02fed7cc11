"""Redis adapter of the response cache.

Layout under the prefix ``P`` (``<topic prefix>cache:`` by default):
- ``P resp:<model>:<version>:<scope>:<sha256>`` one entry (JSON of CachedCompletion) with its TTL. The hash covers the
  normalized request (model version included) and three generation counters, so bumping a counter makes every entry it
  covers unreachable at once (no race: a completion stored after an invalidation is stored under the old generation and
  never read). The model version is in the key's path too, so a version change deletes the old version's entries only
  (``drop_version``) without bumping a counter: ingress instances see a new version at different moments, and a
  counter bump by a late one would throw away what the others already stored under the new version;
- ``P gen:all``, ``P gen:model:<model>``, ``P gen:scope:<scope>`` the generation counters;
- ``P stats`` a hash of cumulative counts across every ingress (hits, misses, stores, stored_bytes, invalidations);
- ``P sizes`` entries and bytes per model as the last scan found them, and ``P sizes:turn`` who scans next (see
  ``shared_sizes``).
Invalidation bumps the counter, then deletes the entries it covers (found by key pattern) to free their memory.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, field

from redis.asyncio import Redis

_GLOB = re.compile(r"([*?\[\]\\])")
_UNSAFE = re.compile(r"[^a-zA-Z0-9._-]")


def _glob_escape(text: str) -> str:
    return _GLOB.sub(r"\\\1", text)


@dataclass
class CacheStats:
    entries: int = 0
    bytes: int = 0
    by_model: dict[str, tuple[int, int]] = field(default_factory=dict)  # model -> (entries, bytes)
    counters: dict[str, int] = field(default_factory=dict)  # cumulative: hits, misses, stores, ...
    redis: dict[str, object] = field(default_factory=dict)  # evicted_keys, used_memory, maxmemory_policy


class RedisResponseStore:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis, self.prefix = redis, prefix

    def _model(self, model: str) -> str:
        return _UNSAFE.sub("-", model)

    async def entry_key(self, model: str, version: str, scope: str, digest: str) -> str:
        generations = await self._redis.mget(
            [f"{self.prefix}gen:all", f"{self.prefix}gen:model:{model}", f"{self.prefix}gen:scope:{scope}"]
        )
        stamp = ".".join((g.decode() if isinstance(g, bytes) else str(g or 0)) for g in generations)
        full = hashlib.sha256(f"{digest}:{stamp}".encode()).hexdigest()
        return f"{self.prefix}resp:{self._model(model)}:{self._model(version)}:{scope}:{full}"

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._redis.get(key)
        return value

    async def put(self, key: str, value: bytes, ttl_s: int) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(key, value, ex=ttl_s)
            pipe.hincrby(f"{self.prefix}stats", "stores", 1)
            pipe.hincrby(f"{self.prefix}stats", "stored_bytes", len(value))
            await pipe.execute()

    async def count(self, counter: str) -> None:
        await self._redis.hincrby(f"{self.prefix}stats", counter, 1)

    async def invalidate(self, model: str | None = None, scope: str | None = None) -> int:
        """Makes every entry of ``model`` (and/or ``scope``; everything when neither) unreachable, then deletes them.
        Returns how many entries were deleted."""
        counters = []
        if model is not None:
            counters.append(f"{self.prefix}gen:model:{model}")
        if scope is not None:
            counters.append(f"{self.prefix}gen:scope:{scope}")
        async with self._redis.pipeline(transaction=False) as pipe:
            for counter in counters or [f"{self.prefix}gen:all"]:
                pipe.incr(counter)
            pipe.hincrby(f"{self.prefix}stats", "invalidations", 1)
            await pipe.execute()
        return await self._delete(
            f"{_glob_escape(self.prefix)}resp:{_glob_escape(self._model(model)) if model is not None else '*'}:*:"
            f"{_glob_escape(scope) if scope is not None else '*'}:*"
        )

    async def drop_version(self, model: str, version: str) -> int:
        """Deletes the entries of one version of a model (unreachable once the registry moved on: the version is
        hashed into every key). Returns how many."""
        return await self._delete(
            f"{_glob_escape(self.prefix)}resp:{_glob_escape(self._model(model))}:{_glob_escape(self._model(version))}:*"
        )

    async def _delete(self, pattern: str) -> int:
        deleted, batch = 0, []
        async for key in self._redis.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await self._redis.unlink(*batch)
                batch = []
        if batch:
            deleted += await self._redis.unlink(*batch)
        return deleted

    async def server_figures(self) -> dict[str, object]:
        info = await self._redis.info()
        return {k: info.get(k) for k in ("evicted_keys", "used_memory", "maxmemory", "maxmemory_policy")}

    async def sizes(self) -> dict[str, tuple[int, int]]:
        """Entries and their bytes (MEMORY USAGE) per model, from a scan of every entry, a page at a time."""
        sizes: dict[str, list[int]] = defaultdict(lambda: [0, 0])

        async def measure(keys: list[bytes]) -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.memory_usage(key)
                usages = await pipe.execute()
            for key, usage in zip(keys, usages, strict=True):
                if usage is None:
                    continue  # expired meanwhile
                model = key.decode()[len(self.prefix) + len("resp:") :].split(":", 1)[0]
                sizes[model][0] += 1
                sizes[model][1] += int(usage)

        page: list[bytes] = []
        async for key in self._redis.scan_iter(match=f"{_glob_escape(self.prefix)}resp:*", count=1000):
            page.append(key)
            if len(page) == 500:
                await measure(page)
                page = []
        if page:
            await measure(page)
        return {model: (n, b) for model, (n, b) in sorted(sizes.items())}

    async def shared_sizes(self, interval_s: float) -> dict[str, tuple[int, int]] | None:
        """``sizes()`` as every ingress instance reports it: one instance an interval scans (whichever takes the
        turn) and leaves what it found in ``P sizes``, which the others read. A scan reads every entry, so one per
        instance would multiply Redis's work by the instances. None while nobody has reported yet."""
        turn = await self._redis.set(f"{self.prefix}sizes:turn", "1", nx=True, px=max(1, int(interval_s * 900)))
        if turn:
            sizes = await self.sizes()
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(f"{self.prefix}sizes")
                reported = {"@": "reported"} | {model: f"{n} {b}" for model, (n, b) in sizes.items()}
                pipe.hset(f"{self.prefix}sizes", mapping=reported)  # type: ignore[arg-type]
                await pipe.execute()
            return sizes
        reported = await self._redis.hgetall(f"{self.prefix}sizes")
        if not reported:
            return None
        sizes = {}
        for model, figures in reported.items():
            if model != b"@":
                entries, size = figures.split()
                sizes[model.decode()] = (int(entries), int(size))
        return sizes

    async def counters(self) -> dict[str, int]:
        """The cumulative counts across every ingress: hits, misses, stores, stored_bytes, invalidations."""
        raw = await self._redis.hgetall(f"{self.prefix}stats")
        return {k.decode(): int(v) for k, v in raw.items()}

    async def stats(self) -> CacheStats:
        """Entries and their bytes per model (a scan: for the ops command, not the request path), the cumulative
        counters, and Redis-wide figures."""
        sizes = await self.sizes()
        return CacheStats(
            entries=sum(n for n, _ in sizes.values()),
            bytes=sum(b for _, b in sizes.values()),
            by_model=sizes,
            counters=await self.counters(),
            redis=await self.server_figures(),
        )
