"""The safety stage's MiniLM embedder on ONNX Runtime, int8 against float32: one prompt at a time on one thread, three
rounds in alternating order over 120 prompts of the labeled set. Run from the checkout with
``PYTHONPATH=. python benchmarks/reports/overhead-2026-12-07-avx2-rounds/embedding_ab.py`` (output: embedding-ab.txt).
"""

from __future__ import annotations

import statistics
import time

from services.safety.classifiers import load_embedder
from services.safety.config import SafetySettings
from services.safety.labels import load_labeled


def main() -> None:
    texts = [example.text for example in load_labeled()][:120]
    cache_dir = SafetySettings().embedding_cache_dir
    embedders = {name: load_embedder(1, name == "int8", "onnx", cache_dir) for name in ("int8", "fp32")}
    for embedder in embedders.values():
        embedder.encode(texts[:5])  # warm-up
    times_ms: dict[str, list[float]] = {name: [] for name in embedders}
    for round_index in range(3):
        for name in ("int8", "fp32") if round_index % 2 == 0 else ("fp32", "int8"):
            for text in texts:
                started = time.perf_counter()
                embedders[name].encode([text])
                times_ms[name].append((time.perf_counter() - started) * 1000)
    for name, values in times_ms.items():
        values.sort()
        p50, p90, mean = statistics.median(values), values[int(len(values) * 0.9)], statistics.mean(values)
        print(f"{name} p50 {p50:.2f} p90 {p90:.2f} mean {mean:.2f} n {len(values)}")


if __name__ == "__main__":
    main()
