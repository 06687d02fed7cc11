"""Tenants, API keys and what a tenant may ask for. Pure logic: storage lives in adapters.py."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from shared.contracts import BatchingProfile, CompletionRequested, Priority

KEY_PREFIX = "ferry-"
ADMIN_KEY_PREFIX = "ferry-admin-"
PRIORITY_RANK: dict[str, int] = {"interactive": 0, "batch": 1, "best_effort": 2}


@dataclass(frozen=True)
class Tenant:
    """Who a request belongs to, and the limits and privacy settings that come with it."""

    id: str
    name: str = ""
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    monthly_token_quota: int | None = None
    retention_days: int = 0
    max_priority: Priority = "interactive"
    default_priority: Priority = "interactive"
    default_profile: BatchingProfile | None = None
    cache_shared_scope: str | None = None  # response cache: share entries with tenants that opted in to this name
    cache_sampled: bool = False  # response cache: cache sampled (temperature > 0, unseeded) answers too
    default_variant: str | None = None  # model variant of requests that name none (None: the model's default)
    screening_policy: str | None = None
    """Digest of the prompt-screening policy in force for the tenant (its own row of ``safety_policies``, else the
    ``*`` row; None without either), read with the tenant. It keys the response cache: see services/cache/policy.py."""

    @property
    def retains_text(self) -> bool:
        """Only a tenant that opted in to retention has prompt or completion text stored or logged anywhere."""
        return self.retention_days > 0

    def priority_for(self, asked: Priority | None) -> Priority:
        """The tenant's default when none is asked; raises PriorityNotAllowed above the tenant's ceiling."""
        priority = asked or self.default_priority
        if PRIORITY_RANK[priority] < PRIORITY_RANK[self.max_priority]:
            raise PriorityNotAllowed(priority, self.max_priority)
        return priority

    def priority_capped(self, wished: Priority) -> Priority:
        """``wished``, or the tenant's ceiling when it is above it: for OpenAI's service tiers, which name a kind of
        service rather than a class the tenant must hold."""
        return self.max_priority if PRIORITY_RANK[wished] < PRIORITY_RANK[self.max_priority] else wished


class PriorityNotAllowed(Exception):
    def __init__(self, asked: str, ceiling: str) -> None:
        super().__init__(f"priority '{asked}' is above this tenant's highest allowed priority '{ceiling}'")


@dataclass(frozen=True)
class NewKey:
    """A freshly made key: ``secret`` is shown once and never stored; ``digest`` is what is stored."""

    id: str
    secret: str
    digest: bytes
    prefix: str
    created_at: datetime | None = None
    """Set once the key is stored (the database's clock, as in a listing)."""


def new_api_key(prefix: str = KEY_PREFIX) -> NewKey:
    secret = prefix + secrets.token_urlsafe(32)
    kind = "adminkey" if prefix == ADMIN_KEY_PREFIX else "key"
    shown = len(prefix) + 6
    return NewKey(id=f"{kind}_{secrets.token_hex(8)}", secret=secret, digest=key_digest(secret), prefix=secret[:shown])


def key_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def bearer_key(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def estimated_tokens(request: CompletionRequested, choices: int = 1) -> int:
    """Tokens charged against the tenant's limits at admission, before the worker counts them: the prompt's token ids,
    or its characters / 4 (the usual rule of thumb; the ingress runs no tokenizer, and charges no chat template),
    plus every token the request's choices may generate. The difference with the real count is settled when the
    request finishes."""
    prompt = request.prompt_tokens_estimate(template_tokens_per_message=0)
    return prompt + choices * request.sampling.max_tokens
