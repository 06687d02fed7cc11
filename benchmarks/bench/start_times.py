"""A model's cold start and warm reload with its engine process forked from the preloaded server
(FERRY_WORKER_ENGINE_PROCESS_SERVER, the default) and spawned as vLLM does it, side by side: each round measures both
in fresh processes, one after the other, alternating which goes first.

``python -m benchmarks.bench.start_times MODEL server|spawn`` measures one (targets.model_start_times) and prints
its JSON; ``bench --start-times`` runs the rounds and prints the comparison.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

from shared.runtime import run as run_event_loop

ROOT = Path(__file__).resolve().parents[2]
METHODS = {"server": True, "spawn": False}
FIGURES = {
    "cold_registry_to_first_token_s": "cold start, registry to first token (s)",
    "warm_reload_to_first_token_s": "warm reload to first token (s)",
    "engine_memory_measured_mib": "engine memory as the worker measures it (MiB)",
}


def measure_once(model: str, method: str) -> dict[str, object]:
    """One cold start and warm reload of ``model`` in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench.start_times", model, method],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise SystemExit(f"{method} start of {model} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def compare(model: str, rounds: int) -> dict[str, object]:
    runs: dict[str, list[dict[str, object]]] = {method: [] for method in METHODS}
    for round_ in range(rounds):
        order = list(METHODS) if round_ % 2 == 0 else list(reversed(METHODS))
        for method in order:
            runs[method].append(measure_once(model, method))
            print(f"round {round_ + 1}/{rounds}: {method} done", file=sys.stderr, flush=True)
    medians = {
        method: {figure: statistics.median(float(r[figure]) for r in results) for figure in FIGURES}  # type: ignore[arg-type]
        for method, results in runs.items()
    }
    server_memory = [float(r["process_server_memory_mib"]) for r in runs["server"]]  # type: ignore[arg-type]
    return {
        "model": model,
        "rounds": rounds,
        "medians": medians,
        "process_server_memory_mib": server_memory,
        "runs": runs,
    }


def format_comparison(result: dict[str, object]) -> str:
    medians: dict[str, dict[str, float]] = result["medians"]  # type: ignore[assignment]
    lines = [
        f"{result['model']}, {result['rounds']} rounds, medians",
        "| figure | forked from the server | spawned (vLLM's own) | server / spawned |",
        "| --- | --- | --- | --- |",
    ]
    for figure, label in FIGURES.items():
        server, spawn = medians["server"][figure], medians["spawn"][figure]
        lines.append(f"| {label} | {server:.2f} | {spawn:.2f} | {server / spawn:.2f} |")
    memory = ", ".join(f"{m:.0f}" for m in result["process_server_memory_mib"])  # type: ignore[attr-defined]
    lines.append(f"The server's own memory once its engines had stopped (MiB, each round): {memory}")
    return "\n".join(lines)


if __name__ == "__main__":
    from benchmarks.bench.targets import model_start_times

    model_id, method = sys.argv[1], sys.argv[2]
    print(json.dumps(run_event_loop(model_start_times(model_id, process_server=METHODS[method]))))
