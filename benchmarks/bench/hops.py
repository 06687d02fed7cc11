"""Where the time goes: per-hop durations of each request, from the spans the services export (one trace per request).

``python -m benchmarks.bench.hops REPORT_DIR [--traces DIR]`` reads the run's wall-clock window from its
report.json and the services' ``*.traces.jsonl`` (``.state/logs`` under ``infra/platform up``), and prints median and
p99 per hop."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np

# Hops in request order; each is (end of one span, start of the next) or a span's own duration. A prompt screened
# beside generation goes from the ingress to the safety stage and to the batcher at once; its verdict comes back to
# the ingress, which holds the worker's first reply until then.
HOPS = {
    "ingress: validate + publish to Kafka": "ingress_span",
    "Kafka -> safety poll + screening": "ingress_end->safety_start",
    "safety: policy + publish (screened topic, or the verdict)": "safety_span",
    "Kafka + batcher poll": "before_batcher->dispatch_start",
    "batcher: publish batch": "dispatch_span",
    "Kafka -> worker": "dispatch_end->generate_start",
    "worker start -> first reply at ingress": "generate_start->first_reply",
    "worker: whole generation": "generate_span",
    "beside: ingress -> safety verdict at ingress": "ingress_end->cleared",
    "beside: first reply held for the verdict": "first_reply->cleared",
}
CLEARED = "ferry.ingress.reply:prompt_cleared"  # the safety stage's verdict, told apart from the worker's replies
SCREENED_PUBLISH = "publish to screened"  # FastStream's producer span, named after the topic


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def hop_durations(spans: list[dict], window: tuple[float, float] | None = None) -> dict[str, list[float]]:
    """Seconds spent in each hop, one value per request whose trace has every span; spans as the console exporter
    writes them (name, context.trace_id, start_time, end_time)."""
    by_trace: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    beside: set[str] = set()  # traces of requests screened beside generation
    for span in spans:
        start, end = _seconds(span["start_time"]), _seconds(span["end_time"])
        if window and not window[0] <= start <= window[1]:
            continue
        name, trace_id, attributes = span["name"], span["context"]["trace_id"], span.get("attributes", {})
        if name == "ferry.ingress.reply" and attributes.get("ferry.event") == "prompt_cleared":
            name = CLEARED
        elif ".screened." in name and name.endswith(" publish"):
            name = SCREENED_PUBLISH
        elif name == "ferry.ingress.chat_completions" and attributes.get("ferry.prompt_screening") == "beside":
            beside.add(trace_id)
        by_trace[trace_id][name].append((start, end))
    hops: dict[str, list[float]] = {hop: [] for hop in HOPS}
    needed = (
        "ferry.ingress.chat_completions",
        "ferry.batcher.dispatch",
        "ferry.worker.generate",
        "ferry.ingress.reply",
    )
    for trace_id, named in by_trace.items():
        if not all(named.get(n) for n in needed):
            continue
        ingress = named["ferry.ingress.chat_completions"][0]
        dispatch = named["ferry.batcher.dispatch"][0]
        generate = named["ferry.worker.generate"][0]
        first_reply = min(start for start, _ in named["ferry.ingress.reply"])
        # with the safety stage before generation, the gap from the ingress to the batcher splits in three; without
        # it, or beside generation, it is one hop
        safety = named["ferry.safety.screen_prompt"][0] if named.get("ferry.safety.screen_prompt") else None
        cleared = named[CLEARED][0][0] if named.get(CLEARED) else None
        # beside: from the ingress's publish to the screened topic (its own span ends only once both records are
        # confirmed, often after the batcher has the request)
        beside_sent = named[SCREENED_PUBLISH][0][0] if trace_id in beside and named.get(SCREENED_PUBLISH) else None
        values: dict[str, float | None] = {
            "ingress_span": ingress[1] - ingress[0],
            "ingress_end->safety_start": safety[0] - ingress[1] if safety else None,
            "safety_span": safety[1] - safety[0] if safety else None,
            "before_batcher->dispatch_start": dispatch[0]
            - (beside_sent if beside_sent is not None else safety[1] if safety else ingress[1]),
            "dispatch_span": dispatch[1] - dispatch[0],
            "dispatch_end->generate_start": generate[0] - dispatch[1],
            "generate_start->first_reply": first_reply - generate[0],
            "generate_span": generate[1] - generate[0],
            "ingress_end->cleared": cleared - ingress[1] if cleared is not None else None,
            "first_reply->cleared": max(0.0, cleared - first_reply) if cleared is not None else None,
        }
        for hop, key in HOPS.items():
            if values[key] is not None:
                hops[hop].append(values[key])
    return hops


def table(hops: dict[str, list[float]]) -> str:
    counts = {len(v) for v in hops.values()}
    lines = [
        f"requests with a complete trace: {max(counts) if counts else 0}",
        "",
        "| hop | median (ms) | p99 (ms) |",
        "| --- | --- | --- |",
    ]
    for hop, values in hops.items():
        if values:
            lines.append(f"| {hop} | {np.median(values) * 1000:.1f} | {np.percentile(values, 99) * 1000:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench-hops", description=__doc__)
    p.add_argument("report", type=Path, help="a bench report folder (holds report.json)")
    p.add_argument("--traces", type=Path, default=Path(".state/logs"), help="folder of the services' *.traces.jsonl")
    args = p.parse_args(argv)
    window = tuple(json.loads((args.report / "report.json").read_text())["config"]["wall_clock"])
    spans = [json.loads(line) for path in sorted(args.traces.glob("*.traces.jsonl")) for line in path.open()]
    text = table(hop_durations(spans, window))  # type: ignore[arg-type]
    (args.report / "hops.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
