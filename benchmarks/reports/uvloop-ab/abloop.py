"""One A/B step against the running platform: sequential TTFT (60 requests), then 16 streams with CPU per service."""
import json, os, random, statistics, subprocess, sys, time
from pathlib import Path
import httpx
sys.path.insert(0, "/work/main")
from benchmarks.bench.cpu import CpuMeter, infra_pids
label, out = sys.argv[1], Path(sys.argv[2])
run = Path("/work/main/.state/run")
roots = infra_pids(run)
for f in run.glob("*.pid"):
    name = f.stem
    if name not in roots:
        try: roots[name] = int(f.read_text().split()[0])
        except Exception: pass
key = open("/work/main/.state/dev-api-key").read().strip()
words = "the quick brown fox jumps over the lazy dog while a city sleeps under rain".split()
def ttft(n):
    out = []
    with httpx.Client(timeout=60) as c:
        for i in range(n):
            prompt = " ".join(random.choice(words) + random.choice("abcdefghij") for _ in range(64))
            body = {"model": "tiny-random", "stream": True, "max_tokens": 16, "messages": [{"role": "user", "content": prompt}]}
            t0 = time.perf_counter(); first = None
            with c.stream("POST", "http://127.0.0.1:8000/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}) as r:
                for line in r.iter_lines():
                    if first is None and line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                            first = time.perf_counter() - t0
            out.append(first * 1000)
    return out
ttft(10)
t = ttft(60)
meter = CpuMeter(roots); meter.start()
env = dict(os.environ); env.pop("AB_ASYNCIO", None)
subprocess.run(["/work/main/infra/platform", "bench", "--model", "tiny-random", "--concurrency", "16", "--num-prompts", "320",
                "--output-tokens", "64:64", "--input-words", "32:128", "--quiet", "--out", str(out / label)], env=env, check=True,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
cpu = meter.stop()
rep = json.loads((out / label / "report.json").read_text())["targets"][0]["summary"]
done = rep["completed"]
line = {"label": label, "ttft_c1_p50": statistics.median(t), "ttft_c1_p90": sorted(t)[53],
        "c16_tok_s": rep["output_throughput"], "c16_ttft_p50": rep["ttft"]["median"], "c16_tpot_p50": rep["tpot"]["median"],
        "cpu_ms_per_req": {k: round(v * 1000 / done, 2) for k, v in sorted(cpu.items())}, "failed": rep["failed"]}
print(json.dumps(line))
with open(out / "ab.jsonl", "a") as f: f.write(json.dumps(line) + "\n")
