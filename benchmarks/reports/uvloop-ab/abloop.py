"""One A/B step against the running platform: sequential TTFT (60 requests), then 16 streams with CPU per service.

usage: abloop.py LABEL OUT_DIR (run by ab.sh, with the platform up from /work/main)"""

import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, "/work/main")
from benchmarks.bench.cpu import CpuMeter, infra_pids  # noqa: E402

URL = "http://127.0.0.1:8000/v1/chat/completions"
WORDS = "the quick brown fox jumps over the lazy dog while a city sleeps under rain".split()


def ttft_ms(key: str, n: int) -> list[float]:
    """TTFT of ``n`` streamed chats one after another: request to the first chunk that carries text."""
    out = []
    with httpx.Client(timeout=60) as client:
        for _ in range(n):
            prompt = " ".join(random.choice(WORDS) + random.choice("abcdefghij") for _ in range(64))
            body = {
                "model": "tiny-random",
                "stream": True,
                "max_tokens": 16,
                "messages": [{"role": "user", "content": prompt}],
            }
            started, first = time.perf_counter(), None
            with client.stream("POST", URL, json=body, headers={"authorization": f"Bearer {key}"}) as response:
                for line in response.iter_lines():
                    if first is None and line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                            first = time.perf_counter() - started
            out.append(first * 1000)
    return out


def main() -> None:
    label, out = sys.argv[1], Path(sys.argv[2])
    run_dir = Path("/work/main/.state/run")
    roots = infra_pids(run_dir)
    for pid_file in run_dir.glob("*.pid"):
        if pid_file.stem not in roots:
            roots[pid_file.stem] = int(pid_file.read_text().split()[0])
    key = Path("/work/main/.state/dev-api-key").read_text().strip()
    ttft_ms(key, 10)
    ttfts = ttft_ms(key, 60)
    meter = CpuMeter(roots)
    meter.start()
    env = dict(os.environ)
    env.pop("AB_ASYNCIO", None)  # the client the same for both sides
    command = ["/work/main/infra/platform", "bench", "--model", "tiny-random", "--concurrency", "16"]
    command += ["--num-prompts", "320", "--output-tokens", "64:64", "--input-words", "32:128", "--quiet"]
    subprocess.run([*command, "--out", str(out / label)], env=env, check=True, capture_output=True)
    cpu = meter.stop()
    summary = json.loads((out / label / "report.json").read_text())["targets"][0]["summary"]
    done = summary["completed"]
    line = {
        "label": label,
        "ttft_c1_p50": statistics.median(ttfts),
        "ttft_c1_p90": sorted(ttfts)[53],
        "c16_tok_s": summary["output_throughput"],
        "c16_ttft_p50": summary["ttft"]["median"],
        "c16_tpot_p50": summary["tpot"]["median"],
        "cpu_ms_per_req": {k: round(v * 1000 / done, 2) for k, v in sorted(cpu.items())},
        "failed": summary["failed"],
    }
    print(json.dumps(line))
    with open(out / "ab.jsonl", "a") as jsonl:
        jsonl.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
