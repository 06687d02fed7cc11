"""How long generation goes on after a client leaves, through a running platform. ``python -m benchmarks.cancel``

Each round streams a long chat completion, reads until its first text, then closes the connection, as a client that
gives up does. The ingress then decides the cancel and publishes it; the worker that runs the request aborts it in the
engine. The worker's histograms time both parts:
- ``ferry_worker_cancel_to_abort_seconds``: from the ingress's decision (``RequestCancelled.cancelled_at``) to the
  engine's stream ending, Kafka's delivery of the cancel included;
- ``ferry_worker_cancel_produced_seconds`` and ``ferry_worker_cancel_delivered_seconds``: the cancel's way to the worker
  in two parts, split at its record's Kafka CreateTime (whole milliseconds, so each part may be off by up to 1 ms;
  their sum is exact): the sender's own delay, then the producer's batching, the broker, the worker's fetch and loop;
- ``ferry_worker_stop_to_abort_seconds``: from the cancel reaching the worker to the engine's stream ending.
Rounds run one at a time, a second apart, so each cancel is timed alone. The report gives each histogram's mean and
the bucket its p50 and p90 fall in (a histogram keeps buckets, not values). Both clocks are this machine's; across
machines, the first figure also holds the skew between the ingress's clock and the worker's. The ingress hears of the
closed connection from uvicorn at once (Starlette's stream listens for the disconnect), so the first figure is close to
the whole time from the client's leaving.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import OUT_HELP, emit_report
from shared.settings import CommonSettings

HISTOGRAMS = {
    "ferry_worker_cancel_to_abort_seconds": "cancel decided at the ingress -> engine stopped",
    "ferry_worker_cancel_produced_seconds": "cancel decided -> its record produced (Kafka CreateTime)",
    "ferry_worker_cancel_delivered_seconds": "record produced -> read by the worker",
    "ferry_worker_stop_to_abort_seconds": "cancel at the worker -> engine stopped",
}


@dataclass(frozen=True)
class Histogram:
    buckets: dict[float, float]  # upper bound -> observations at or below it (cumulative, as Prometheus keeps them)
    total: float
    count: float

    def minus(self, earlier: Histogram) -> Histogram:
        return Histogram(
            {le: n - earlier.buckets.get(le, 0.0) for le, n in self.buckets.items()},
            self.total - earlier.total,
            self.count - earlier.count,
        )

    def bucket_of(self, quantile: float) -> float:
        """The upper bound of the bucket the quantile falls in."""
        for le in sorted(self.buckets):
            if self.buckets[le] >= quantile * self.count:
                return le
        return float("inf")


def parse_histogram(text: str, name: str, model: str) -> Histogram:
    """The histogram ``name`` of ``model`` in a /metrics page (zero when the page has none yet)."""
    buckets: dict[float, float] = {}
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name == f"{name}_bucket":
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == f"{name}_sum":
                total = sample.value
            elif sample.name == f"{name}_count":
                count = sample.value
    return Histogram(buckets, total, count)


async def leave_after_first_text(client: httpx.AsyncClient, body: dict[str, object]) -> float:
    """Streams ``body`` until its first text, then closes the connection; returns the time to that text (ms)."""
    started = time.perf_counter()
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {") and any(c["delta"].get("content") for c in json.loads(line[6:])["choices"]):
                return (time.perf_counter() - started) * 1000
    raise RuntimeError("the stream ended before any text")


@contextlib.asynccontextmanager
async def idle_reader_delays(bootstrap: str, topic: str) -> AsyncIterator[list[float]]:
    """Kafka's own delivery of each cancel, for comparison: the time from each record's CreateTime to its reading by
    a consumer in this process, whose event loop is otherwise idle but for the client's streams (ms)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    delays: list[float] = []

    async def read() -> None:
        async for record in consumer:
            delays.append(time.time() * 1000 - record.timestamp)

    try:
        partition = TopicPartition(topic, 0)  # the topic has one partition (services/worker/main.py)
        consumer.assign([partition])
        await consumer.seek_to_end(partition)
        reading = asyncio.create_task(read())
        yield delays
        await asyncio.sleep(0.5)
        reading.cancel()
    finally:
        await consumer.stop()


async def run(args: argparse.Namespace) -> str:
    headers = {"authorization": f"Bearer {args.key_file.read_text().strip()}"}
    common = CommonSettings()
    async with (
        httpx.AsyncClient(timeout=30) as metrics_client,
        idle_reader_delays(common.kafka_bootstrap, common.topics.cancellations) as idle_delays,
    ):

        async def scrape() -> str:
            return (await metrics_client.get(args.worker_metrics)).text

        before = await scrape()
        first_text_ms = []
        async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=300) as client:
            for round_no in range(args.rounds):
                body = {
                    "model": args.model,
                    "messages": [{"role": "user", "content": f"Tell me a long story about a ferry, take {round_no}."}],
                    "max_tokens": args.max_tokens,
                    "temperature": 1.0,
                    "stream": True,
                }
                first_text_ms.append(await leave_after_first_text(client, body))
                await asyncio.sleep(args.gap_s)  # the cancel lands and the abort is timed before the next round
        after = await scrape()
    histograms = {
        name: parse_histogram(after, name, args.model).minus(parse_histogram(before, name, args.model))
        for name in HISTOGRAMS
    }
    if not any(h.count for h in histograms.values()):
        raise SystemExit(f"{args.worker_metrics} timed no cancel of {args.model}: is it that model's worker?")
    return markdown(args, histograms, first_text_ms, idle_delays)


def markdown(
    args: argparse.Namespace, histograms: dict[str, Histogram], first_ms: list[float], idle_delays: list[float]
) -> str:
    lines = [
        "# Cancel: how long generation goes on after a client leaves",
        "",
        f"`python -m benchmarks.cancel --model {args.model} --rounds {args.rounds} --max-tokens {args.max_tokens}` "
        f"against a running platform ({args.url}): each round streams a chat completion, closes the connection at its "
        f"first text (after {min(first_ms):.0f}-{max(first_ms):.0f} ms), and waits {args.gap_s:g} s.",
        "",
        "| span | cancels timed | mean (ms) | p50 within (ms) | p90 within (ms) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, what in HISTOGRAMS.items():
        h = histograms[name]
        mean = h.total / h.count * 1000 if h.count else float("nan")
        lines.append(
            f"| {what} (`{name}`) | {h.count:.0f} of {args.rounds} | {mean:.1f} "
            f"| {h.bucket_of(0.5) * 1000:g} | {h.bucket_of(0.9) * 1000:g} |"
        )
    if idle_delays:
        ordered = sorted(idle_delays)
        lines += [
            "",
            "For comparison, Kafka's own delivery: a consumer in the benchmark's process (whose event loop otherwise "
            f"only reads the streams) read the same {len(ordered)} cancel records {statistics.mean(ordered):.1f} ms "
            f"(mean; median {statistics.median(ordered):.1f}, max {ordered[-1]:.1f}) after their CreateTime.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cancel", description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--key-file", type=Path, default=Path(".state/dev-api-key"))
    p.add_argument(
        "--worker-metrics",
        default="http://127.0.0.1:8020/metrics",
        help="/metrics of the worker that serves --model (`up` gives each model a worker: 8020, 8021, ...)",
    )
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--gap-s", type=float, default=1.0)
    p.add_argument("--out", type=Path, help=OUT_HELP)
    args = p.parse_args(argv)
    emit_report(asyncio.run(run(args)), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
