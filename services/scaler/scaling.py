"""The scaler's service layer: every ``interval_s`` it reads each model's signals, asks the policy, acts (local
supervisor, worker-control commands) and records the decision (PostgreSQL, metrics). Dependencies are handed in."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.batcher.config import input_topic
from services.scaler.adapters import KafkaLag, ScalerStore
from services.scaler.config import ScalerSettings
from services.scaler.forecast import Forecast, SeasonalForecaster
from services.scaler.policy import Autoscaler, Decision, Signals, Tier
from services.scaler.signals import DemandCounter, StatusBoard
from services.scaler.supervisor import Event, Supervisor
from shared.contracts import (
    BatchFormed,
    CompletionRequested,
    Message,
    ModelEvictionRequested,
    ModelPreloadRequested,
    utc_now,
)
from shared.topics import Topics

logger = logging.getLogger(__name__)


class ScalerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["model"]
        self.replicas = Gauge("ferry_scaler_replicas", "Replicas running or starting.", labels, registry=registry)
        self.desired = Gauge("ferry_scaler_desired_replicas", "Replicas the policy wants.", labels, registry=registry)
        self.lag = Gauge(
            "ferry_scaler_lag_requests", "Requests waiting (Kafka lag and batchers).", labels, registry=registry
        )
        self.backlog = Gauge(
            "ferry_scaler_backlog_tokens", "Token weight of the waiting requests.", labels, registry=registry
        )
        self.demand = Gauge("ferry_scaler_demand_per_hour", "Requests over the last hour.", labels, registry=registry)
        self.forecast = Gauge(
            "ferry_scaler_forecast_per_hour", "Forecast peak over the horizon, requests/h.", labels, registry=registry
        )
        self.wape = Gauge(
            "ferry_scaler_forecast_wape",
            "Forecast error: sum |forecast - actual| / sum actual.",
            labels,
            registry=registry,
        )
        self.tier = Gauge("ferry_scaler_tier", "1 for the model's current tier.", ["model", "tier"], registry=registry)
        self.decisions = Counter(
            "ferry_scaler_decisions", "Decisions by action.", ["model", "policy", "action"], registry=registry
        )
        self.worker_events = Counter(
            "ferry_scaler_worker_events", "Supervised worker events.", ["model", "kind"], registry=registry
        )
        self.worker_start = Histogram(
            "ferry_scaler_worker_start_seconds",
            "From starting a worker process to its /health answering.",
            ["model"],
            buckets=(5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300),
            registry=registry,
        )


@dataclass
class ModelState:
    model: str
    policy: Autoscaler
    forecaster: SeasonalForecaster
    tokens_per_request: float
    tier: Tier | None = None
    last: Decision | None = None
    last_recorded: Decision | None = None
    forecast: Forecast | None = None
    history: list[Decision] = field(default_factory=list)


Publish = Callable[[Message, str, str], Awaitable[None]]
"""publish(message, topic, key)"""


@dataclass
class ScalerDeps:
    settings: ScalerSettings
    topics: Topics
    models: list[str]
    lag: KafkaLag
    board: StatusBoard
    publish: Publish
    metrics: ScalerMetrics
    batcher_group: str
    worker_group_prefix: str
    store: ScalerStore | None = None
    supervisor: Supervisor | None = None
    clock: Callable[[], datetime] = utc_now


class Scaler:
    def __init__(self, deps: ScalerDeps) -> None:
        self.deps = deps
        s = deps.settings
        self.demand = DemandCounter(timedelta(seconds=s.bucket_s))
        self.states = {
            m: ModelState(
                m,
                Autoscaler(m, s.policy_config(m), predictive=s.predictive),
                SeasonalForecaster(s.forecast_config()),
                s.tokens_per_request,
            )
            for m in deps.models
        }
        self.events: list[Event] = []

    async def load_history(self) -> None:
        """Teaches each forecaster the demand recorded in PostgreSQL (hours before the current one)."""
        if self.deps.store is None:
            return
        now = self.deps.clock()
        this_hour = now.replace(minute=0, second=0, microsecond=0)
        for state in self.states.values():
            rows = await self.deps.store.demand_history(
                state.model, now - timedelta(days=self.deps.settings.history_days)
            )
            for hour, requests, seconds in rows:
                if hour < this_hour and seconds > 0:
                    state.forecaster.observe(hour, requests, seconds)
            logger.info("%s: learned %d hour(s) of demand history", state.model, len(rows))

    async def tick(self) -> list[Decision]:
        decisions = []
        if self.deps.supervisor is not None:
            self._worker_events(await self.deps.supervisor.poll())
        for state in self.states.values():
            try:
                decisions.append(await self._decide(state))
            except Exception:
                logger.exception("%s: no decision this round", state.model)
        return decisions

    async def _decide(self, state: ModelState) -> Decision:
        d, s, now = self.deps, self.deps.settings, self.deps.clock()
        model = state.model
        end = await d.lag.end_offset(d.topics.requests(model))
        arrived, closed = self.demand.update(model, end, now)
        for start, count in closed:
            state.forecaster.observe(start, count, s.bucket_s)
            if d.store is not None:
                await d.store.add_demand(model, start, count, s.bucket_s)
        opened = self.demand.open_bucket(model)
        if closed and opened and d.store is not None:
            made = state.forecaster.forecast(opened[0])
            await d.store.add_forecast(model, opened[0], made.requests_per_hour, made.basis)

        queued = await d.lag.backlog(d.batcher_group, input_topic(d.topics, model), CompletionRequested)
        batched = await d.lag.backlog(d.worker_group_prefix + model, d.topics.batches(model), BatchFormed)
        held, held_tokens = d.board.waiting_tokens(model, now)
        peeked_requests = queued.requests + batched.requests
        peeked_tokens = queued.tokens + batched.tokens
        if peeked_tokens and peeked_requests:
            state.tokens_per_request = 0.8 * state.tokens_per_request + 0.2 * peeked_tokens / peeked_requests
        backlog_tokens = (peeked_tokens or peeked_requests * state.tokens_per_request) + held_tokens
        lag_requests = round(peeked_requests) + held

        if d.supervisor is not None:
            replicas = d.supervisor.replicas(model)
        elif d.board.heard_from_workers():
            replicas = len(d.board.workers(model, now))
        else:  # no heartbeats at all (workers without them): assume the actuator (KEDA) applied the last decision
            replicas = state.last.desired if state.last is not None else 0
        usual = state.forecaster.forecast(now)
        per_hour = self.demand.per_hour(model, now, usual.requests_per_hour if usual.seasonal_per_hour else None)
        signals = Signals(
            model=model,
            at=now,
            replicas=replicas,
            lag_records=lag_requests,
            backlog_tokens=backlog_tokens,
            requests_per_hour=per_hour,
            recent_requests=arrived,
            tokens_per_request=state.tokens_per_request,
        )
        state.forecast = state.forecaster.peak(now, state.policy.config.horizon) if s.predictive else None
        decision = state.policy.decide(signals, state.forecast)
        await self._act(state, decision)
        self._observe(state, decision)
        return decision

    async def _act(self, state: ModelState, decision: Decision) -> None:
        d = self.deps
        if d.supervisor is not None and decision.desired != d.supervisor.replicas(state.model):
            self._worker_events(d.supervisor.scale(state.model, decision.desired))
        # commands on transitions only: waking from zero or warming up from cold (load), going to zero (unload)
        was = state.last.desired if state.last is not None else 0
        warmed = state.tier == "cold" and decision.tier != "cold"
        control: Message | None = None
        if decision.desired > 0 and (was == 0 or warmed):
            control = ModelPreloadRequested(model=state.model, reason=decision.reason)
        elif decision.desired == 0 and was > 0:
            control = ModelEvictionRequested(model=state.model, reason=decision.reason)
        state.tier = decision.tier
        if control is not None and d.settings.worker_control:
            await d.publish(control, d.topics.worker_control, state.model)
            logger.info("%s: %s (%s)", state.model, type(control).__name__, decision.reason)
        if decision.action != "hold":
            logger.info(
                "%s: %s %d -> %d: %s", state.model, decision.action, decision.current, decision.desired, decision.reason
            )
        if d.store is not None and self._worth_recording(state, decision):
            await d.store.add_decision(decision)
            state.last_recorded = decision

    def _worth_recording(self, state: ModelState, decision: Decision) -> bool:
        """Every change; holds only when their rule changes or once a minute, so the table stays readable."""
        last = state.last_recorded
        if decision.action != "hold" or last is None:
            return True
        same_rule = last.action == "hold" and last.reason.split(":")[0] == decision.reason.split(":")[0]
        return not same_rule or decision.at - last.at >= timedelta(minutes=1)

    def _observe(self, state: ModelState, decision: Decision) -> None:
        m, model = self.deps.metrics, state.model
        state.last = decision
        state.history = [*state.history[-19:], decision] if decision.action != "hold" else state.history
        m.replicas.labels(model).set(decision.current)
        m.desired.labels(model).set(decision.desired)
        m.lag.labels(model).set(decision.signals["lag_records"])  # type: ignore[arg-type]
        m.backlog.labels(model).set(decision.signals["backlog_tokens"])  # type: ignore[arg-type]
        m.demand.labels(model).set(decision.signals["requests_per_hour"])  # type: ignore[arg-type]
        if decision.forecast_per_hour is not None:
            m.forecast.labels(model).set(decision.forecast_per_hour)
        wape = state.forecaster.accuracy.wape
        if wape is not None:
            m.wape.labels(model).set(wape)
        for tier in ("hot", "warm", "cold"):
            m.tier.labels(model, tier).set(1 if tier == decision.tier else 0)
        m.decisions.labels(model, decision.policy, decision.action).inc()

    def _worker_events(self, events: list[Event]) -> None:
        supervisor = self.deps.supervisor
        for e in events:
            self.deps.metrics.worker_events.labels(e.model, e.kind).inc()
            if e.kind == "ready" and supervisor is not None:
                started = next((w.started for w in supervisor.workers if w.name == e.worker), None)
                if started is not None:
                    self.deps.metrics.worker_start.labels(e.model).observe(e.at - started)
        self.events.extend(events)
        del self.events[:-200]
