"""The in-process benchmark of the ingress's stream path streams every event it is given, as a client would see it."""

from __future__ import annotations

from opentelemetry.trace import NoOpTracer

from benchmarks.bench.stream_path import _records, measure, one_stream
from services.ingress.adapters import ReplyListener
from shared.settings import CommonSettings


async def test_each_measured_stream_is_the_whole_sse_answer() -> None:
    listener = ReplyListener(CommonSettings(), "replies", None, NoOpTracer())  # type: ignore[arg-type]
    # the role chunk, 5 deltas, the finish reason, the usage and [DONE]
    assert await one_stream(listener, _records("chatcmpl-a", 5), "chatcmpl-a") == 1 + 5 + 1 + 1 + 1
    assert listener.waiting == 0


async def test_one_figure_per_round() -> None:
    figures = await measure(tokens=4, streams=3, rounds=2)
    assert len(figures) == 2 and all(f > 0 for f in figures)
