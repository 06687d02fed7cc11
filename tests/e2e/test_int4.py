"""The int4 variant on real vLLM, in this process: the model store builds SmolLM2's int4 checkpoint (GPTQ format) from
its folder, vLLM loads it with its int4 kernel, and the model still answers a factual question right."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

from services.worker.engine import Engine, EngineConfig
from services.worker.model_store import ensure_model
from shared.contracts import ChatMessage, SamplingParams
from shared.registry import read_seed
from tests.e2e.platform import MODELS_DIR

SMOLLM2 = "smollm2-135m-instruct"


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


async def answer(path: Path, question: str) -> tuple[str, str]:
    record = next(m for m in read_seed() if m.id == SMOLLM2)
    engine = await Engine.start(EngineConfig(SMOLLM2, path, record.max_model_len, 0.25, 4, variant="int4"))
    try:
        prompt = engine.render_prompt([ChatMessage(role="user", content=question)])
        text = ""
        async for step in engine.generate(uuid.uuid4().hex, prompt, SamplingParams(max_tokens=24, temperature=0)):
            text += step.text
        return text, engine.variant
    finally:
        await engine.shutdown()


def test_smollm2_in_int4_takes_less_than_half_the_disk_and_still_knows_the_capital_of_france() -> None:
    source = next(m for m in read_seed() if m.id == SMOLLM2).source
    base = ensure_model(SMOLLM2, source, MODELS_DIR)
    int4 = ensure_model(SMOLLM2, source, MODELS_DIR, "int4")
    assert int4 == MODELS_DIR / f"{SMOLLM2}@int4"
    quantization = json.loads((int4 / "config.json").read_text())["quantization_config"]
    assert (quantization["quant_method"], quantization["bits"], quantization["group_size"]) == ("gptq", 4, 64)
    assert folder_bytes(int4) < folder_bytes(base) / 2  # bf16 weights against int4 layers and float16 embeddings
    assert ensure_model(SMOLLM2, source, MODELS_DIR, "int4") == int4  # built once, then reused

    text, variant = asyncio.run(answer(int4, "What is the capital of France?"))
    assert variant == "int4"
    assert "Paris" in text, text
