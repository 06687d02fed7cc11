"""The ingress's own CPU per streamed request, in this process: from the reply records as Kafka hands them over to the
SSE text, with no broker, HTTP server or socket. It isolates the Python work the ingress does for each delta (decode
and route the record, drop repeats, merge choices, write the chunk), which a whole-platform run on two shared cores
cannot resolve from its noise.

``python -m benchmarks.bench.stream_path [--tokens 64] [--streams 200] [--rounds 7]``: each stream is ``--tokens``
one-token deltas and a final event, one record per event loop turn, as replies arrive; prints the median CPU time
per stream over the rounds."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import timedelta

from aiokafka import ConsumerRecord
from opentelemetry.trace import NoOpTracer

from services.ingress.adapters import ReplyListener
from services.ingress.serving import merged, stream_sse, watched, without_repeats
from shared.contracts import CompletionFinished, Message, TokensGenerated, Usage, utc_now
from shared.runtime import run as run_event_loop
from shared.settings import CommonSettings


def _record(event: Message, offset: int) -> ConsumerRecord:
    value = event.model_dump_json().encode()
    return ConsumerRecord("replies", 0, offset, 0, 0, None, value, None, 0, len(value), [])


def _records(request_id: str, tokens: int) -> list[ConsumerRecord]:
    events: list[Message] = [
        TokensGenerated(request_id=request_id, sequence=i, text=" word", token_count=1, text_offset=5 * i)
        for i in range(tokens)
    ]
    usage = Usage(prompt_tokens=32, completion_tokens=tokens, total_tokens=32 + tokens)
    text = " word" * tokens
    events.append(
        CompletionFinished(
            request_id=request_id, sequence=tokens, model="m", text=text, finish_reason="length", usage=usage
        )
    )
    return [_record(event, offset) for offset, event in enumerate(events)]


async def one_stream(listener: ReplyListener, records: list[ConsumerRecord], request_id: str) -> int:
    """Streams one request's records through the ingress's path; returns the number of SSE chunks written."""
    events = listener.expect(request_id, utc_now() + timedelta(minutes=1))

    async def arrive() -> None:
        for record in records:
            await listener._route(record)  # what the listener's consumer loop does with each record
            await asyncio.sleep(0)

    arrivals = asyncio.create_task(arrive())
    replies = watched(merged([without_repeats(events)]), lambda index, final: None, lambda reason, indexes: None)
    chunks = [chunk async for chunk in stream_sse(request_id, "m", True, replies)]
    await arrivals
    return len(chunks)


async def measure(tokens: int, streams: int, rounds: int) -> list[float]:
    """CPU milliseconds per stream, one figure per round."""
    listener = ReplyListener(CommonSettings(), "replies", None, NoOpTracer())  # type: ignore[arg-type]
    per_round = []
    for round_ in range(rounds + 1):  # the first warms up
        ids = [f"chatcmpl-{round_}-{i}" for i in range(streams)]
        records = {request_id: _records(request_id, tokens) for request_id in ids}
        started = time.process_time()
        for request_id in ids:
            await one_stream(listener, records[request_id], request_id)
        per_round.append(1000 * (time.process_time() - started) / streams)
    return per_round[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench.stream_path", description=__doc__)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    per_round = run_event_loop(measure(args.tokens, args.streams, args.rounds))
    print(
        f"ingress CPU per streamed request of {args.tokens} one-token deltas: median {statistics.median(per_round):.2f}"
        f" ms, fastest round {min(per_round):.2f} ms ({args.rounds} rounds of {args.streams} streams)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
