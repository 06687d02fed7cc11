"""The scaler's service layer wired with fakes for Kafka lag, PostgreSQL and publishing (its real adapters are covered
by tests/e2e/test_scaler.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry

from services.scaler.config import ScalerSettings
from services.scaler.scaling import Scaler, ScalerDeps, ScalerMetrics
from services.scaler.signals import StatusBoard, TopicBacklog
from shared.topics import Topics

T0 = datetime(2026, 11, 24, 10, 0, 30, tzinfo=UTC)
TOPICS = Topics("t.")


class FakeLag:
    def __init__(self) -> None:
        self.ends: dict[str, int] = {}
        self.backlogs: dict[tuple[str, str], TopicBacklog] = {}

    async def end_offset(self, topic: str) -> int:
        return self.ends.get(topic, 0)

    async def backlog(self, group: str, topic: str, kind: type) -> TopicBacklog:
        return self.backlogs.get((group, topic), TopicBacklog(0, 0.0, 0.0))


class FakeStore:
    def __init__(self) -> None:
        self.decisions: list = []
        self.demand: list = []
        self.forecasts: list = []

    async def add_decision(self, d) -> None:
        self.decisions.append(d)

    async def add_demand(self, model, start, count, seconds) -> None:
        self.demand.append((model, start, count, seconds))

    async def add_forecast(self, model, start, per_hour, basis) -> None:
        self.forecasts.append((model, start, per_hour, basis))

    async def demand_history(self, model, since) -> list[tuple[datetime, int, int]]:
        # yesterday: quiet (60 req/h) except a busy 10:00-11:00 (6000 req/h)
        day = (T0 - timedelta(days=1)).replace(hour=0, minute=0, second=0)
        return [(day + timedelta(hours=h), 6000 if h == 10 else 60, 3600) for h in range(24)]


def build(**settings: object) -> tuple[Scaler, FakeLag, FakeStore, list, list[datetime]]:
    lag, store, published, now = FakeLag(), FakeStore(), [], [T0]

    async def publish(message, topic, key) -> None:
        published.append((type(message).__name__, topic, key))

    scaler = Scaler(
        ScalerDeps(
            settings=ScalerSettings(
                **(
                    {
                        "models": ["m"],
                        "predictive": False,
                        "up_window_s": 0,
                        "zero_after_s": 60,
                        "down_window_s": 0,
                        "down_cooldown_s": 0,
                        "target_backlog_tokens": 1000,
                    }
                    | settings
                ),
            ),
            topics=TOPICS,
            models=["m"],
            lag=lag,  # type: ignore[arg-type]
            board=StatusBoard(timedelta(seconds=30)),
            publish=publish,
            metrics=ScalerMetrics(CollectorRegistry()),
            batcher_group="batchers",
            worker_group_prefix="workers.",
            store=store,  # type: ignore[arg-type]
            clock=lambda: now[0],
        )
    )
    return scaler, lag, store, published, now


async def test_arrivals_wake_a_model_at_zero_and_tell_workers_to_preload_it() -> None:
    scaler, lag, store, published, now = build(worker_control=True)
    [first] = await scaler.tick()
    assert (first.current, first.desired, first.tier) == (0, 0, "cold")  # no workers heard of, no demand
    lag.ends[TOPICS.requests("m")] = 3
    lag.backlogs[("workers.m", TOPICS.batches("m"))] = TopicBacklog(1, 3.0, 2400.0)
    now[0] = T0 + timedelta(seconds=5)
    [woken] = await scaler.tick()
    assert (woken.desired, woken.reason.split(",")[0]) == (3, "wake on demand")
    assert woken.signals["lag_records"] == 3 and woken.signals["backlog_tokens"] == 2400
    assert woken.signals["recent_requests"] == 3
    assert published == [("ModelPreloadRequested", "t.worker-control", "m")]
    assert [d.action for d in store.decisions] == ["hold", "scale_up"]
    now[0] = T0 + timedelta(seconds=10)
    await scaler.tick()
    assert len(published) == 1  # commands go out on transitions, not every round
    assert scaler.states["m"].tokens_per_request < 800  # moving towards the 800 seen, from 300


async def test_without_supervisor_or_heartbeats_the_last_decision_counts_as_applied() -> None:
    scaler, lag, store, _, now = build()
    await scaler.tick()
    for seconds in (5, 10, 15):
        lag.ends[TOPICS.requests("m")] = seconds  # steady arrivals
        now[0] = T0 + timedelta(seconds=seconds)
        await scaler.tick()
    # one wake-up, then holds at 1 (not a wake-up every round because nobody reports replicas)
    assert [(d.current, d.desired, d.action) for d in store.decisions] == [
        (0, 0, "hold"),
        (0, 1, "scale_up"),
        (1, 1, "hold"),
    ]
    assert scaler.states["m"].last is not None and scaler.states["m"].last.current == 1


async def test_worker_control_is_off_unless_asked() -> None:
    scaler, lag, _, published, now = build()
    lag.ends[TOPICS.requests("m")] = 0
    await scaler.tick()
    lag.ends[TOPICS.requests("m")] = 2
    now[0] = T0 + timedelta(seconds=5)
    [woken] = await scaler.tick()
    assert woken.desired == 1 and published == []


async def test_holds_are_recorded_when_their_rule_changes_or_once_a_minute() -> None:
    scaler, _, store, _, now = build()
    for seconds in (0, 5, 10, 30, 59, 61):
        now[0] = T0 + timedelta(seconds=seconds)
        await scaler.tick()
    assert [(d.at - T0).total_seconds() for d in store.decisions] == [0, 61]


async def test_closed_demand_buckets_are_stored_with_the_forecast_made_for_the_next() -> None:
    scaler, lag, store, _, now = build()
    lag.ends[TOPICS.requests("m")] = 10
    await scaler.tick()  # 10:00:30, baseline
    lag.ends[TOPICS.requests("m")] = 40
    now[0] = T0 + timedelta(seconds=20)  # 10:00:50
    await scaler.tick()
    lag.ends[TOPICS.requests("m")] = 45
    now[0] = T0 + timedelta(seconds=40)  # 10:01:10: the 10:00 bucket closes with 30 requests
    await scaler.tick()
    bucket = T0.replace(second=0)
    assert store.demand == [("m", bucket, 30, 60)]
    assert store.forecasts == [("m", bucket + timedelta(minutes=1), 1800.0, "level")]  # 30 per minute, smoothed


async def test_history_from_postgres_lets_the_scaler_scale_ahead_of_demand() -> None:
    scaler, _, store, _, now = build(predictive=True, replica_tokens_per_second=500, utilization_target=1.0)
    await scaler.load_history()
    now[0] = T0.replace(hour=9, minute=50)  # the busy hour starts in 10 minutes; nothing has arrived today
    [ahead] = await scaler.tick()
    # the forecast peak over the next 20 min is the busy hour's profile: 6000 req/h x 300 tokens / 3600 s = 500 tok/s
    assert ahead.forecast_per_hour is not None and ahead.forecast_per_hour > 3000
    assert ahead.reactive_replicas == 0 and ahead.predictive_replicas >= 1
    assert ahead.desired == ahead.predictive_replicas and "predictive wants" in ahead.reason
    assert "daily profile" in ahead.reason
