"""Summarizes run.sh's log: per arm and model, the median over rounds of the first request's time to its first token
and of the later requests', and the same for each hop."""

import json
import statistics
import sys
from collections import defaultdict

rows = defaultdict(list)  # (arm, model, first?) -> records
arm = None
for line in open(sys.argv[1]):
    if line.startswith("== round"):
        arm = line.split(",")[1].strip()
    elif line.startswith("{"):
        record = json.loads(line)
        rows[(arm, record["model"], record["request"] == 0)].append(record)

HOPS = [
    "ingress: validate + publish to Kafka",
    "Kafka -> safety poll + screening",
    "safety: policy + publish (screened topic, or the verdict)",
    "Kafka + batcher poll",
    "batcher: publish batch",
    "Kafka -> worker",
    "worker start -> first reply at ingress",
]


def median(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    return f"{statistics.median(values):.1f}" if values else "-"


print("| model | arm | requests | TTFT (ms) | " + " | ".join(HOPS) + " |")
print("| --- " * (4 + len(HOPS)) + "|")
for model in ["smollm2-135m-instruct", "tiny-random"]:
    for arm_name in ["before", "after"]:
        for first in [True, False]:
            records = rows[(arm_name, model, first)]
            cells = [median([r["ttft_ms"] for r in records])]
            cells += [median([r["hops_ms"].get(h) for r in records]) for h in HOPS]
            which = f"first ({len(records)})" if first else f"2nd-4th ({len(records)})"
            print(f"| {model} | {arm_name} | {which} | " + " | ".join(cells) + " |")
