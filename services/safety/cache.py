"""An in-memory cache of classifier scores for identical prompts, so a prompt sent again (retries, templated traffic)
skips the model classifiers. Pure: no client; the clock is handed in.

- Keyed by an HMAC of the classifier version, the tenant and the prompt text, under a key drawn at start-up: the text is
  never kept, and the digests cannot be matched against precomputed hashes of guessed prompts, nor compared across
  restarts. The tenant is part of the key so one tenant cannot time another's prompts by a faster answer.
- Holds model scores only (what costs time); rules run again on every prompt (they also give the masked snippet, and
  the deny-list may change), and the tenant's policy is applied afresh, so a policy edit applies at once.
- Entries live ``ttl_s`` (the setting allows 5 to 60 minutes) and at most ``max_entries`` are kept (oldest dropped)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

Scores = dict[str, dict[str, float]]
"""Per classifier, the score per category."""


@dataclass
class ScreeningCache:
    version: str
    """Identifies the classifiers whose scores are kept (names, weights, training data); part of every key."""
    ttl_s: float = 600.0
    max_entries: int = 50_000
    clock: Callable[[], float] = time.monotonic
    hits: int = 0
    misses: int = 0
    _secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    _entries: OrderedDict[bytes, tuple[float, Scores]] = field(default_factory=OrderedDict, repr=False)

    def key(self, tenant_id: str | None, text: str) -> bytes:
        material = "\0".join((self.version, tenant_id or "", text)).encode()
        return hmac.new(self._secret, material, hashlib.sha256).digest()

    def get(self, key: bytes) -> Scores | None:
        found = self._entries.get(key)
        if found is None or self.clock() - found[0] >= self.ttl_s:
            if found is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self.hits += 1
        return found[1]

    def put(self, key: bytes, scores: Scores) -> None:
        self._entries[key] = (self.clock(), scores)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    @property
    def size(self) -> int:
        return len(self._entries)
