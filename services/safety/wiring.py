"""Wiring of output screening into a worker, in one call made at the worker's start-up:

    guard = await build_output_guard(common, broker, pool)   # None when FERRY_SAFETY_OUTPUT_SCREENING=false
    ...
    await serve_request(engine, request, publish_reply, coalesce_ms, guard)

It loads the classifiers (a few seconds for the embedding model, which by default screens each completed output once;
``FERRY_SAFETY_OUTPUT_EMBEDDING=true`` adds it to the sliding windows too), reads tenant policies from PostgreSQL, and
publishes flagged outputs to ``<prefix>safety.flagged`` for the review queue.
"""

from __future__ import annotations

import asyncio

import asyncpg
from faststream.kafka import KafkaBroker

from services.safety.config import SafetySettings
from services.safety.output import OutputGuard
from services.safety.screening import Classifier, Screener
from services.safety.store import PolicyStore
from shared.contracts import ContentFlagged
from shared.kafka import publish_message
from shared.settings import CommonSettings


async def build_output_guard(
    common: CommonSettings, broker: KafkaBroker, pool: asyncpg.Pool, settings: SafetySettings | None = None
) -> OutputGuard | None:
    settings = settings or SafetySettings()
    if not settings.output_screening:
        return None
    window: list[Classifier] = []
    final: list[Classifier] = []
    if settings.output_embedding or settings.output_embedding_final:
        from services.safety.classifiers import EmbeddingClassifier, load_embedder

        # torch's threads are left alone in a worker (None): with ONNX Runtime the embedder has one thread of its own
        embedder = await asyncio.to_thread(
            load_embedder, None, settings.embedding_int8, settings.embedding_runtime, settings.embedding_cache_dir
        )
        embedding = await asyncio.to_thread(EmbeddingClassifier.trained, embedder, None, settings.embedding_max_windows)
        final.append(embedding)
        if settings.output_embedding:
            window.append(embedding)
    policies = PolicyStore(pool)
    topic = common.topics.safety_flagged

    async def flag(flagged: ContentFlagged) -> None:
        await publish_message(broker, flagged, topic, key=flagged.request_id, request_id=flagged.request_id)

    deny = tuple(settings.deny_terms)
    return OutputGuard(
        Screener(window, (), deny),
        policies.get,
        flag,
        settings.output_window_chars,
        settings.output_every_chars,
        final_screener=Screener(final, (), deny) if final != window else None,
    )
