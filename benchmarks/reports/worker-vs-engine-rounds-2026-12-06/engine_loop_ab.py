"""The engine in process alone, the same load, on asyncio's loop and on uvloop's, alternating."""

import asyncio
import sys

import uvloop

sys.path.insert(0, "/work/main")
from benchmarks.bench.__main__ import _local_model  # noqa: E402
from benchmarks.bench.metrics import summarize  # noqa: E402
from benchmarks.bench.prompts import synthetic  # noqa: E402
from benchmarks.bench.runner import Load  # noqa: E402
from benchmarks.bench.targets import run_in_process  # noqa: E402


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 else "tiny-random"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 512
    path, max_len = _local_model(model)
    requests = synthetic(count, (32, 128), (64, 64), seed=0)
    for i in range(2):
        for name, runner in (("asyncio", asyncio.run), ("uvloop", uvloop.run)):
            load = Load(requests, [0.0] * count, 16, show_progress=False)
            results, _, duration = runner(run_in_process(model, path, max_len, load))
            s = summarize(results, duration)
            print(f"{name} round {i + 1}: {s.output_throughput:.1f} tok/s, TPOT p50 {s.tpot.median:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
