"""What the response cache may keep, under which key, for how long. Pure logic: no client library.

Privacy rules, in order:
- A request whose tenant has not opted in to retention (``CompletionRequested.retain_text`` false) is never looked up
  and never stored: no text stored means no response cache entry at all for that tenant. Anonymous requests carry
  ``retain_text`` false, so they are not cached either.
- Entries are scoped to the tenant, or to a shared scope the tenant explicitly opted into; a key never matches across
  scopes, because the scope is part of the hashed key.
- Only the completion (text, finish reason, usage) is stored; the key is a SHA-256 digest, so no prompt text is kept.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from shared.contracts import (
    CompletionFinished,
    CompletionRequested,
    FinishReason,
    ReplyEvent,
    ResponseFormat,
    StructuredOutputs,
    TokensGenerated,
    Usage,
    utc_now,
)

ContentClass = Literal["greedy", "seeded", "conversation", "sampled"]
CONTENT_CLASSES: tuple[ContentClass, ...] = get_args(ContentClass)
MIN_TTL_S, MAX_TTL_S = 3600, 24 * 3600

BypassReason = Literal["disabled", "no_store", "no_retention", "non_deterministic", "logprobs", "token_ids", "tools"]

_UNSAFE = re.compile(r"[^a-zA-Z0-9._-]")
KEY_VERSION = 2  # bump when the normalization changes, so old entries are never read with a new meaning


@dataclass(frozen=True)
class TenantCachePolicy:
    """A tenant's cache settings, stored with the tenant (migration 0006); the default is the safe one.

    ``shared_scope``: entries go to (and come from) this scope instead of the tenant's own, so tenants that opted in to
    the same scope share answers. ``cache_sampled``: requests with temperature > 0 and no seed are cached too (one
    sample then stands for all).

    ``screening_policy``: digest of the prompt-screening policy in force for the tenant. A hit skips the safety stage,
    so it is part of the key: after a policy edit, and between tenants of one shared scope under different policies,
    a request misses and is screened under its own policy rather than answered from what another policy let through.
    """

    shared_scope: str | None = None
    cache_sampled: bool = False
    screening_policy: str | None = None


@dataclass(frozen=True)
class RequestCacheOptions:
    """What the client asked of the cache, from ``Cache-Control`` (as in HTTP): ``no-store`` neither reads nor
    writes, ``no-cache`` skips the lookup but stores the fresh answer, ``max-age=N`` accepts entries at most N s old."""

    no_store: bool = False
    no_cache: bool = False
    max_age_s: int | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RequestCacheOptions:
        directives: dict[str, str | None] = {}
        for value in headers.get("cache-control", "").split(","):
            name, _, arg = value.strip().partition("=")
            if name:
                directives[name.lower()] = arg.strip().strip('"') or None
        max_age = directives.get("max-age")
        return cls(
            no_store="no-store" in directives,
            no_cache="no-cache" in directives or max_age == "0",
            max_age_s=int(max_age) if max_age and max_age.isdigit() else None,
        )


@dataclass(frozen=True)
class Decision:
    """Whether (and how) one request uses the cache. ``digest`` is None exactly when the request bypasses it."""

    read: bool
    write: bool
    scope: str | None = None
    digest: str | None = None
    content_class: ContentClass | None = None
    ttl_s: int | None = None
    bypass: BypassReason | None = None

    @classmethod
    def bypassed(cls, reason: BypassReason) -> Decision:
        return cls(read=False, write=False, bypass=reason)


def tenant_scope(tenant_id: str) -> str:
    return f"t.{_UNSAFE.sub('-', tenant_id)}"


def shared_scope(name: str) -> str:
    return f"s.{_UNSAFE.sub('-', name)}"


def scope_of(request: CompletionRequested, policy: TenantCachePolicy) -> str:
    """Whose entries a request may read and write: the opted-in shared scope, else its tenant, else anonymous."""
    if policy.shared_scope:
        return shared_scope(policy.shared_scope)
    if request.tenant_id is not None:
        return tenant_scope(request.tenant_id)
    return "anon"


def _response_format_key(response_format: ResponseFormat) -> dict[str, object]:
    # strict joins the key only when set, as the options after key version 2 do
    return response_format.model_dump(exclude=set() if response_format.strict else {"strict"})


def _structured_outputs_key(structured: StructuredOutputs) -> dict[str, object]:
    # the choices are a set: in another order they allow the same outputs
    return structured.model_dump() | ({"choice": sorted(set(structured.choice))} if structured.choice else {})


def unseeded_sampling(request: CompletionRequested) -> bool:
    """Sampled with no seed: the answer differs each time it is generated."""
    return request.sampling.temperature > 0 and request.sampling.seed is None


def content_class(request: CompletionRequested, policy: TenantCachePolicy) -> ContentClass | None:
    """The class that sets an entry's TTL, or None when the answer is not reproducible and the tenant did not opt in
    to caching sampled output."""
    sampling = request.sampling
    if unseeded_sampling(request) and not policy.cache_sampled:
        return None
    if sum(1 for m in request.messages if m.role == "user") > 1:
        return "conversation"
    if sampling.temperature == 0:
        return "greedy"
    return "seeded" if sampling.seed is not None else "sampled"


def normalized(
    request: CompletionRequested,
    model_version: str,
    scope: str,
    screening_policy: str | None = None,
    sample: int = 0,
) -> dict[str, object]:
    """Everything that changes the answer, or whether it may be given (the tenant's screening policy), in a canonical
    form; nothing that does not (request id, stream, reply topic, deadline, priority). Greedy decoding ignores top_p,
    top_k, min_p and the seed, and the order of stop strings does not matter."""
    sampling = request.sampling
    greedy = sampling.temperature == 0
    budget = request.thinking_token_budget
    # options added after key version 2 join the key only when set, so the keys of entries stored before stay valid
    later_options = {
        name: value
        for name, value in (
            ("presence_penalty", sampling.presence_penalty),
            ("frequency_penalty", sampling.frequency_penalty),
            ("response_format", sampling.response_format and _response_format_key(sampling.response_format)),
            ("logit_bias", sorted(sampling.logit_bias.items())),
            ("top_k", 0 if greedy else sampling.top_k),
            ("min_p", 0.0 if greedy else sampling.min_p),
            ("repetition_penalty", sampling.repetition_penalty if sampling.repetition_penalty != 1.0 else None),
            ("min_tokens", sampling.min_tokens),
            ("ignore_eos", sampling.ignore_eos),
            ("stop_token_ids", sorted(set(sampling.stop_token_ids))),
            ("include_stop_str_in_output", sampling.include_stop_str_in_output),
            ("keep_special_tokens", not sampling.skip_special_tokens),
            (
                "special_tokens_side_by_side",
                not sampling.skip_special_tokens and not sampling.spaces_between_special_tokens,
            ),
            ("bad_words", sorted(set(sampling.bad_words))),
            ("allowed_token_ids", sampling.allowed_token_ids and sorted(set(sampling.allowed_token_ids))),
            (
                "structured_outputs",
                sampling.structured_outputs and _structured_outputs_key(sampling.structured_outputs),
            ),
            ("sample", sample),
            # a reasoning model's switches and earlier thinking reach its template, so they change the prompt
            ("enable_thinking", None if request.enable_thinking is None else str(request.enable_thinking).lower()),
            ("reasoning_effort", request.reasoning_effort),
            ("thinking_token_budget", None if budget is None else [budget]),  # 0 is a budget too
            ("reasoning", [[i, m.reasoning] for i, m in enumerate(request.messages) if m.reasoning is not None]),
            # how the prompt ends changes it
            ("add_generation_prompt", None if request.add_generation_prompt else "false"),
            ("continue_final_message", request.continue_final_message or None),
            ("prompt_token_ids", request.prompt_token_ids),  # a raw prompt given as token ids
            ("documents", request.documents),  # the template shows them to the model
            (
                "truncate_prompt_tokens",
                None
                if request.truncate_prompt_tokens is None
                else [request.truncate_prompt_tokens, request.truncation_side],
            ),
        )
        if value
    }
    return later_options | {
        "v": KEY_VERSION,
        "model": request.model,
        "model_version": model_version,
        "variant": request.variant,
        "scope": scope,
        "screening_policy": screening_policy,
        "messages": [[m.role, m.content] for m in request.messages] if request.is_chat() else None,
        "prompt": request.prompt,
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": 1.0 if greedy else sampling.top_p,
        "seed": None if greedy else sampling.seed,
        "stop": sorted(set(sampling.stop)),
    }


def request_digest(
    request: CompletionRequested,
    model_version: str,
    scope: str,
    screening_policy: str | None = None,
    sample: int = 0,
) -> str:
    canonical = json.dumps(
        normalized(request, model_version, scope, screening_policy, sample), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def decide(
    request: CompletionRequested,
    model_version: str,
    options: RequestCacheOptions,
    policy: TenantCachePolicy,
    ttl_s: Mapping[ContentClass, int],
    enabled: bool = True,
    sample: int = 0,
) -> Decision:
    """``sample``: the index of the choice in a request for several. Each choice is a request of its own; the
    choices of a sampled request (no seed) would all have one key and so one answer, so each keeps its own entry.
    Greedy choices are all the same answer and share it; seeded ones differ by their seeds already."""
    if not enabled:
        return Decision.bypassed("disabled")
    if options.no_store:
        return Decision.bypassed("no_store")
    if not request.retain_text:
        return Decision.bypassed("no_retention")
    if request.sampling.logprobs is not None or request.sampling.prompt_logprobs is not None:
        return Decision.bypassed("logprobs")  # entries keep the text, not each token's logprobs
    if request.return_token_ids:
        return Decision.bypassed("token_ids")  # nor the tokens' ids
    if request.tools or any(m.tool_calls or m.role == "tool" for m in request.messages):
        return Decision.bypassed("tools")  # entries keep the text, and the key neither tools nor calls
    cls = content_class(request, policy)
    if cls is None:
        return Decision.bypassed("non_deterministic")
    scope = scope_of(request, policy)
    return Decision(
        read=not options.no_cache,
        write=True,
        scope=scope,
        digest=request_digest(
            request, model_version, scope, policy.screening_policy, sample if unseeded_sampling(request) else 0
        ),
        content_class=cls,
        ttl_s=ttl_s[cls],
    )


class CachedCompletion(BaseModel):
    """What one entry holds: the answer and its accounting, never the prompt."""

    model_config = ConfigDict(frozen=True)

    text: str = Field(description="The whole completion.")
    finish_reason: FinishReason = Field(description="Why generation ended.")
    usage: Usage = Field(description="Token counts of the original generation.")
    model_version: str = Field(description="Registry version of the model that generated it.")
    variant: str | None = Field(None, description="The model variant that generated it; unset in older entries.")
    reasoning: str | None = Field(None, description="A reasoning model's thinking before the answer (none: None).")
    created_at: datetime = Field(default_factory=utc_now, description="When it was stored (UTC).")

    def fresh_enough(self, options: RequestCacheOptions, now: datetime) -> bool:
        return options.max_age_s is None or (now - self.created_at).total_seconds() <= options.max_age_s


def storable(finished: CompletionFinished) -> bool:
    """An aborted generation is not the answer to the request; only complete ones are kept."""
    return finished.finish_reason in ("stop", "length")


def entry_of(finished: CompletionFinished, model_version: str) -> CachedCompletion:
    return CachedCompletion(
        text=finished.text,
        finish_reason=finished.finish_reason,
        usage=finished.usage,
        model_version=model_version,
        variant=finished.variant,
        reasoning=finished.reasoning,
    )


async def replay(entry: CachedCompletion, request: CompletionRequested) -> AsyncIterator[ReplyEvent]:
    """The reply events a worker would have sent for ``request``, from a cached answer: one delta when streaming, then
    the final event. The ingress turns them into the same JSON or SSE chunks as a live answer."""
    sequence = 0
    if request.stream and (entry.text or entry.reasoning):
        yield TokensGenerated(
            request_id=request.request_id,
            sequence=0,
            text=entry.text,
            token_count=entry.usage.completion_tokens,
            text_offset=0,
            reasoning=entry.reasoning or "",
            reasoning_offset=None if entry.reasoning is None else 0,
            prompt_token_count=entry.usage.prompt_tokens,
        )
        sequence = 1
    yield CompletionFinished(
        request_id=request.request_id,
        sequence=sequence,
        model=request.model,
        text=entry.text,
        finish_reason=entry.finish_reason,
        usage=entry.usage,
        variant=entry.variant,
        reasoning=entry.reasoning,
    )
