"""Times the first streamed chats after a start, against a running platform (run.sh): per model, four requests, each
after 2 s of idleness, so that the first differs from the others only in coming first. Prints each request's time to
its first token and, from the services' spans (.state/logs/*.traces.jsonl under the clone), where it went."""

import json
import sys
import time
from pathlib import Path

import httpx

from benchmarks.bench.hops import HOPS, hop_durations

clone = Path(sys.argv[1])
key = (clone / ".state/dev-api-key").read_text().strip()
IDLE_S = 2.0


def spans_of(window: tuple[float, float]) -> dict[str, list[float]]:
    spans = []
    for path in (clone / ".state/logs").glob("*.traces.jsonl"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                spans.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return hop_durations(spans, window)


with httpx.Client(base_url="http://127.0.0.1:8000/v1", headers={"authorization": f"Bearer {key}"}, timeout=60) as c:
    for model in ["smollm2-135m-instruct", "tiny-random"]:
        for i in range(4):
            time.sleep(IDLE_S)
            body = {
                "model": model,
                "stream": True,
                "max_tokens": 4,
                "temperature": 0,
                "messages": [{"role": "user", "content": f"What is the capital of France? ({i})"}],
            }
            started, first = time.time(), None
            with c.stream("POST", "/chat/completions", json=body) as response:
                for line in response.iter_lines():
                    if first is None and line.startswith("data: {"):
                        choices = json.loads(line[len("data: ") :])["choices"]
                        if choices and choices[0]["delta"].get("content"):  # text, not the opening's empty content
                            first = time.time()
            time.sleep(1.5)  # the spans reach their files
            hops = spans_of((started - 0.01, time.time()))
            split = {name: round(values[0] * 1000, 1) for name, values in hops.items() if values and name in HOPS}
            ttft = round((first - started) * 1000, 1) if first else None
            print(json.dumps({"model": model, "request": i, "ttft_ms": ttft, "hops_ms": split}), flush=True)
