"""The worker's engine with prefix caching on: a repeated prompt reuses its cached prefix only under the same
cache_salt, so one tenant's prompts never warm (or time) another's. Real vLLM, tiny model, in this process; and through
the platform, the usage that reports it."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from openai import OpenAI
from openai.types import CompletionUsage

from services.worker.engine import Engine, EngineConfig
from shared.contracts import ChatMessage, SamplingParams
from shared.registry import read_seed
from tests.e2e.platform import MODELS_DIR, TINY_MODEL, Platform
from tests.e2e.test_operations import metric_total


async def cached_tokens_per_request(salts: list[str | None]) -> list[int]:
    record = next(m for m in read_seed() if m.id == TINY_MODEL)
    engine = await Engine.start(EngineConfig(TINY_MODEL, MODELS_DIR / TINY_MODEL, record.max_model_len, 0.25, 4))
    try:
        words = " ".join(f"word{i}" for i in range(150))
        prompt = engine.render_prompt([ChatMessage(role="user", content=f"{uuid.uuid4().hex} {words}")])
        found = []
        for salt in salts:
            cached = 0
            steps = engine.generate(uuid.uuid4().hex, prompt, SamplingParams(max_tokens=2, temperature=0), salt)
            async for step in steps:
                cached = max(cached, step.cached_tokens)
            found.append(cached)
        return found
    finally:
        await engine.shutdown()


def test_prefix_cache_is_shared_within_a_salt_and_never_across_salts() -> None:
    first_a, again_a, first_b, again_b = asyncio.run(
        cached_tokens_per_request(["tenant-a", "tenant-a", "tenant-b", "tenant-b"])
    )
    assert first_a == 0
    assert again_a > 0, "the same tenant's repeated prompt should reuse its cached prefix"
    assert first_b == 0, "another tenant's identical prompt must not hit tenant A's cached prefix"
    assert again_b > 0


def test_the_usage_reports_the_prompt_tokens_taken_from_the_prefix_cache(platform: Platform) -> None:
    """OpenAI's usage.prompt_tokens_details.cached_tokens: a second question behind the same long system prompt
    reuses the first one's computed prefix, and says how much of its prompt that was."""
    openai = OpenAI(base_url=f"{platform.base_url}/v1", api_key=platform.api_key, max_retries=0, timeout=120)
    system = f"{uuid.uuid4().hex} You answer questions about ferries. " + " ".join(f"rule{i}" for i in range(120))

    def usage(question: str) -> CompletionUsage:
        answer = openai.chat.completions.create(
            model=TINY_MODEL,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
            max_tokens=2,
            temperature=0,
        )
        assert answer.usage is not None
        return answer.usage

    def cached_tokens_counted() -> float:  # what operators see: the ingress's token counter
        text = httpx.get(f"{platform.base_url}/metrics", timeout=5).text
        return metric_total(text, "ferry_ingress_tokens_total", model=TINY_MODEL, kind="cached_prompt")

    counted_before = cached_tokens_counted()
    first, second = usage("How long is the crossing?"), usage("When does the last ferry leave?")
    assert first.prompt_tokens_details is not None and second.prompt_tokens_details is not None
    assert first.prompt_tokens_details.cached_tokens == 0  # nobody sent this system prompt before
    # the system prompt's whole blocks come from the cache; the question after it is computed
    assert 0 < second.prompt_tokens_details.cached_tokens < second.prompt_tokens
    assert cached_tokens_counted() - counted_before == second.prompt_tokens_details.cached_tokens
