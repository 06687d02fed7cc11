"""What a running batch holds in the ingress's memory for its input file: ``batches.read_lines`` of the code at a git
revision (before) and of the working tree (after), one after the other in one run, each in a process of its own.
The file is 50,000 chat requests of about 1.7 KB each (84 MiB, within the 100 MiB a file may have).

    PYTHONPATH=. python benchmarks/reports/batch-memory-2026-12-07/measure.py BEFORE_REVISION
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
import tracemalloc
import types

REQUESTS = 50_000
ENDPOINT = "/v1/chat/completions"


def input_file() -> bytes:
    lines = []
    for i in range(REQUESTS):
        messages = [
            {"role": "system", "content": "You are a helpful assistant. " * 10},
            {"role": "user", "content": f"Question {i}: " + "word " * 250},
        ]
        body = {"model": "m", "messages": messages, "max_tokens": 64}
        lines.append(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": ENDPOINT, "body": body}))
    return "\n".join(lines).encode()


def measure(source: str) -> dict[str, float]:
    """read_lines from ``source`` (a batches.py): what its lines hold once read, its peak while reading, and the time
    to read them and then every body."""
    module = sys.modules["batches_measured"] = types.ModuleType("batches_measured")  # (dataclasses look it up)
    exec(compile(source, "batches.py", "exec"), module.__dict__)
    content = input_file()
    gc.collect()
    tracemalloc.start()
    began = time.perf_counter()
    lines, errors = module.read_lines(content, ENDPOINT)
    read_s = time.perf_counter() - began
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert not errors and len(lines) == REQUESTS
    began = time.perf_counter()
    messages = sum(len(line.body["messages"]) for line in lines)
    bodies_s = time.perf_counter() - began
    assert messages == 2 * REQUESTS
    return {"file_mib": len(content) / 2**20, "held_mib": held / 2**20, "peak_mib": peak / 2**20,
            "read_s": read_s, "bodies_s": bodies_s}  # fmt: skip


def main() -> None:
    if sys.argv[1] == "--source":  # a child: measures the batches.py given on stdin
        print(json.dumps(measure(sys.stdin.read())))
        return
    revision = sys.argv[1]
    sources = {
        f"before ({revision})": subprocess.run(
            ["git", "show", f"{revision}:services/ingress/batches.py"], capture_output=True, text=True, check=True
        ).stdout,
        "after (working tree)": open("services/ingress/batches.py").read(),
    }
    print(f"{REQUESTS:,} requests of a chat batch; tracemalloc of read_lines, each in a process of its own\n")
    print("| code | file (MiB) | held by its lines (MiB) | peak while reading (MiB) | read (s) | every body then (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, source in sources.items():
        child = subprocess.run(
            [sys.executable, __file__, "--source"], input=source, capture_output=True, text=True, check=True
        )
        m = json.loads(child.stdout)
        print(f"| {name} | {m['file_mib']:.1f} | {m['held_mib']:.0f} | {m['peak_mib']:.0f} | {m['read_s']:.2f} |"
              f" {m['bodies_s']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
