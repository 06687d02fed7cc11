"""The int4 variant on real vLLM, in this process: the model store builds SmolLM2's int4 checkpoint (AWQ format) from
its folder, vLLM loads it with its int4 kernel, and the model keeps most of its quality: it still answers a factual
question right, and its perplexity on a fixed text stays close to the float32 model's."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from benchmarks.variants import Quality, quality, windows
from services.worker.engine import Engine, EngineConfig, TokenScore, missing_cpu_kernels
from services.worker.model_store import ensure_model
from services.worker.variants import cpu_problems
from shared.contracts import ChatMessage, SamplingParams
from shared.registry import read_seed
from tests.e2e.platform import MODELS_DIR

SMOLLM2 = "smollm2-135m-instruct"


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


async def answer_and_scores(path: Path, variant: str) -> tuple[str, list[list[TokenScore]]]:
    """The variant's greedy answer to the capital question, and its scores of 4 windows of the reference text."""
    record = next(m for m in read_seed() if m.id == SMOLLM2)
    engine = await Engine.start(EngineConfig(SMOLLM2, path, record.max_model_len, 0.25, 4, variant=variant))
    try:
        assert engine.variant == variant
        prompt = engine.render_prompt([ChatMessage(role="user", content="What is the capital of France?")])
        text = ""
        async for step in engine.generate(uuid.uuid4().hex, prompt, SamplingParams(max_tokens=24, temperature=0)):
            text += step.text
        return text, [await engine.score(w) for w in windows(engine, 4, 512)]
    finally:
        await engine.shutdown()


def test_smollm2_in_int4_takes_less_than_half_the_disk_and_keeps_its_answers_and_most_of_its_perplexity() -> None:
    source = next(m for m in read_seed() if m.id == SMOLLM2).source
    base = ensure_model(SMOLLM2, source, MODELS_DIR)
    int4 = ensure_model(SMOLLM2, source, MODELS_DIR, "int4")
    assert int4 == MODELS_DIR / f"{SMOLLM2}@int4"
    quantization = json.loads((int4 / "config.json").read_text())["quantization_config"]
    assert (quantization["quant_method"], quantization["bits"], quantization["group_size"]) == ("awq", 4, 32)
    assert quantization["zero_point"] is True
    assert folder_bytes(int4) < folder_bytes(base) / 2  # bf16 weights against int4 layers and float16 embeddings
    assert ensure_model(SMOLLM2, source, MODELS_DIR, "int4") == int4  # built once, then reused
    if problem := cpu_problems(missing_cpu_kernels()).get("int4"):
        # the worker refuses int4 here with this reason (test_worker_models.py); its quality cannot be measured
        pytest.skip(f"int4 cannot run on this CPU: {problem}")

    text, int4_scores = asyncio.run(answer_and_scores(int4, "int4"))
    assert "Paris" in text, text
    _, fp32_scores = asyncio.run(answer_and_scores(base, "fp32"))
    full: Quality = quality(fp32_scores, fp32_scores)
    four_bit: Quality = quality(int4_scores, fp32_scores)
    # measured on 8 windows: 14.70 -> 18.02 (x1.23), top-1 agreement 75%; symmetric groups of 64 gave x1.50 and 68%
    assert four_bit.perplexity < 1.35 * full.perplexity, (four_bit, full)
    assert four_bit.top1_agreement > 0.70, four_bit
