from __future__ import annotations

from benchmarks.bench.hops import hop_durations


def span(name: str, trace: str, start: float, end: float) -> dict:
    def stamp(t: float) -> str:  # seconds after 2026-11-24T09:00:00Z
        return f"2026-11-24T09:00:{t:09.6f}Z"

    return {"name": name, "context": {"trace_id": trace}, "start_time": stamp(start), "end_time": stamp(end)}


def test_hops_are_the_gaps_and_spans_of_one_trace_computed_by_hand() -> None:
    spans = [
        span("ferry.ingress.chat_completions", "t1", 1.000, 1.002),
        span("ferry.batcher.dispatch", "t1", 1.010, 1.011),
        span("ferry.worker.generate", "t1", 1.020, 1.500),
        span("ferry.ingress.reply", "t1", 1.060, 1.060),
        span("ferry.ingress.reply", "t1", 1.499, 1.499),
        # an incomplete trace (no worker span) is left out
        span("ferry.ingress.chat_completions", "t2", 2.000, 2.001),
        span("ferry.ingress.reply", "t2", 2.100, 2.100),
    ]
    hops = {hop: [round(v * 1000, 3) for v in values] for hop, values in hop_durations(spans).items()}
    assert hops == {
        "ingress: validate + publish to Kafka": [2.0],
        "Kafka -> safety poll + screening": [],
        "safety: policy + publish (screened topic, or the verdict)": [],
        "Kafka + batcher poll": [8.0],
        "batcher: publish batch": [1.0],
        "Kafka -> worker": [9.0],
        "worker start -> first reply at ingress": [40.0],
        "worker: whole generation": [480.0],
        "beside: ingress -> safety verdict at ingress": [],
        "beside: first reply held for the verdict": [],
    }


def test_the_safety_stage_splits_the_way_from_ingress_to_batcher_in_three() -> None:
    spans = [
        span("ferry.ingress.chat_completions", "t1", 1.000, 1.002),
        span("ferry.safety.screen_prompt", "t1", 1.020, 1.021),
        span("ferry.batcher.dispatch", "t1", 1.025, 1.026),
        span("ferry.worker.generate", "t1", 1.030, 1.500),
        span("ferry.ingress.reply", "t1", 1.060, 1.060),
    ]
    hops = {hop: [round(v * 1000, 3) for v in values] for hop, values in hop_durations(spans).items()}
    assert hops["Kafka -> safety poll + screening"] == [18.0]
    assert hops["safety: policy + publish (screened topic, or the verdict)"] == [1.0]
    assert hops["Kafka + batcher poll"] == [4.0]
    assert hops["Kafka -> worker"] == [4.0]


def test_beside_generation_the_batcher_hears_from_the_ingress_and_the_verdict_may_hold_the_first_reply() -> None:
    ingress = span("ferry.ingress.chat_completions", "t1", 1.000, 1.002)
    ingress["attributes"] = {"ferry.prompt_screening": "beside"}
    cleared = span("ferry.ingress.reply", "t1", 1.040, 1.040)
    cleared["attributes"] = {"ferry.event": "prompt_cleared"}
    spans = [
        ingress,
        span("p.screened.m publish", "t1", 1.001, 1.0015),  # the ingress's publish to the batcher's topic
        span("ferry.safety.screen_prompt", "t1", 1.020, 1.021),
        span("ferry.batcher.dispatch", "t1", 1.005, 1.006),
        span("ferry.worker.generate", "t1", 1.010, 1.500),
        span("ferry.ingress.reply", "t1", 1.030, 1.030),
        cleared,
    ]
    hops = {hop: [round(v * 1000, 3) for v in values] for hop, values in hop_durations(spans).items()}
    assert hops["Kafka -> safety poll + screening"] == [18.0]
    assert hops["Kafka + batcher poll"] == [4.0]  # from the ingress's publish, not from the safety stage
    assert hops["worker start -> first reply at ingress"] == [20.0]  # the worker's reply, not the verdict
    assert hops["beside: ingress -> safety verdict at ingress"] == [38.0]
    assert hops["beside: first reply held for the verdict"] == [10.0]


def test_only_traces_starting_inside_the_window_count() -> None:
    spans = [
        span("ferry.ingress.chat_completions", "t1", 1.0, 1.1),
        span("ferry.batcher.dispatch", "t1", 1.2, 1.3),
        span("ferry.worker.generate", "t1", 1.4, 1.5),
        span("ferry.ingress.reply", "t1", 1.45, 1.45),
    ]
    from datetime import datetime

    at_nine = datetime.fromisoformat("2026-11-24T09:00:00+00:00").timestamp()
    assert hop_durations(spans, (at_nine + 5, at_nine + 10))["Kafka -> worker"] == []
    assert len(hop_durations(spans, (at_nine, at_nine + 5))["Kafka -> worker"]) == 1
