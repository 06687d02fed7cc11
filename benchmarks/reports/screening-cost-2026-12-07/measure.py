"""What screening one prompt costs the safety stage on this CPU, in process with nothing else running: the bench's
prompts (``bench --input-words 32:128``) against the labeled set's texts, which earlier figures were measured on.

- the int8 MiniLM embedding on ONNX Runtime (the stage's default) on one thread (its default) and on two, float32 on
  one, and int8 made from a graph fused by ONNX Runtime's transformer optimizer first (not used: see README.md);
- the whole screening as the stage runs it (``Screener.screen_parts``, its settings' classifiers, no cache).

Alternating rounds; medians. Usage: PYTHONPATH=. python benchmarks/reports/screening-cost-2026-12-07/measure.py"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers import optimizer

from benchmarks.bench.prompts import synthetic
from services.safety.classifiers import load_embedder
from services.safety.config import SafetySettings
from services.safety.labels import load_labeled
from services.safety.main import build_screener
from services.safety.onnx_embedder import export_name

ROUNDS = 3


def session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()  # as OnnxEmbedder sets them
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def median_ms(call: Callable[[str], object], texts: list[str]) -> float:
    times = []
    for text in texts:
        started = time.perf_counter()
        call(text)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    settings = SafetySettings()
    embedder = load_embedder(1, True, "onnx", settings.embedding_cache_dir)  # exports both files if missing
    load_embedder(1, False, "onnx", settings.embedding_cache_dir)
    tokenizer = embedder.tokenizer
    texts = {
        "bench prompts (32-128 words)": [r.messages[0]["content"] for r in synthetic(120, (32, 128), (64, 64), seed=3)],
        "labeled set": [example.text for example in load_labeled()][:120],
    }
    for name, some in texts.items():
        pieces = statistics.median(len(tokenizer(t)["input_ids"]) for t in some)
        print(f"{name}: {len(some)} texts, {pieces:.1f} word pieces at the median")

    fp32 = settings.embedding_cache_dir / export_name(False)
    with tempfile.TemporaryDirectory() as tmp:
        fused = Path(tmp) / "fused-int8.onnx"
        optimized = optimizer.optimize_model(str(fp32), model_type="bert", num_heads=12, hidden_size=384)
        optimized.save_model_to_file(str(Path(tmp) / "fused.onnx"))
        quantize_dynamic(
            str(Path(tmp) / "fused.onnx"),
            str(fused),
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": 1},
        )
        sessions = {
            "int8, 1 thread (default)": session(settings.embedding_cache_dir / export_name(True), 1),
            "int8, 2 threads": session(settings.embedding_cache_dir / export_name(True), 2),
            "float32, 1 thread": session(fp32, 1),
            "int8 of the fused graph, 1 thread": session(fused, 1),
        }

        def embed(runner: onnxruntime.InferenceSession) -> Callable[[str], object]:
            names = [i.name for i in runner.get_inputs()]

            def one(text: str) -> object:
                tokens = tokenizer([text], truncation=True, max_length=256, return_tensors="np")
                return runner.run(None, {n: tokens[n].astype(np.int64) for n in names})

            return one

        results: dict[tuple[str, str], list[float]] = {}
        for runner in sessions.values():
            embed(runner)(texts["labeled set"][0])  # warm-up
        for round_index in range(ROUNDS):
            order = list(sessions) if round_index % 2 == 0 else list(reversed(sessions))
            for name in order:
                for text_set, some in texts.items():
                    results.setdefault((name, text_set), []).append(median_ms(embed(sessions[name]), some))
    print("\n| embedding | " + " | ".join(f"{t}, p50 per round (ms)" for t in texts) + " |")
    print("| --- | " + " | ".join("---" for _ in texts) + " |")
    for name in sessions:
        rounds = [", ".join(f"{v:.1f}" for v in results[(name, t)]) for t in texts]
        print(f"| {name} | " + " | ".join(rounds) + " |")

    screener = build_screener(settings.model_copy(update={"screening_cache_ttl_s": 0}))

    async def screen_all() -> list[float]:
        out = []
        for _ in range(ROUNDS):
            times = []
            for text in texts["bench prompts (32-128 words)"]:
                started = time.perf_counter()
                await screener.screen_parts([[text]], None)
                times.append(time.perf_counter() - started)
            out.append(statistics.median(times) * 1000)
        return out

    print("\nwhole screening (Screener.screen_parts), bench prompts, p50 per round (ms):", end=" ")
    print(", ".join(f"{v:.1f}" for v in asyncio.run(screen_all())))


if __name__ == "__main__":
    main()
