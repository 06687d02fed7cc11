"""Scaling benchmark: ``python -m benchmarks.scaling replay|load-step [options]``.

replay     replays a synthetic daily demand trace (morning ramp, an unforecast spike) against the policy code with a
           simple service model, side by side: ferry predictive+reactive, ferry reactive-only, and KEDA's Kafka lag
           rule (ceil(lag / lagThreshold), no window). Prints worker-hours and time over the latency target, writes
           report.md, report.json and plots.
load-step  measures on this machine, with real Kafka, PostgreSQL, batcher, scaler and worker processes, the time from
           a load step on a model at zero replicas to the scaler's decision, to a new worker serving, to the first
           completion.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks.scaling.sim import Outcome, ServiceModel, replay, train
from benchmarks.scaling.trace import DailyTrace
from services.scaler.forecast import SeasonalForecaster
from services.scaler.policy import Autoscaler, KedaLagPolicy, PolicyConfig

HISTORY_START = datetime(2026, 10, 5, tzinfo=UTC)  # a Monday


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.scaling", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("replay", help="replay a daily trace against the policies")
    r.add_argument("--out", type=Path, default=Path("benchmarks/reports/scaling-replay"))
    r.add_argument("--history-days", type=int, default=14, help="days of history the forecast learns first")
    r.add_argument(
        "--startup-s",
        type=float,
        nargs="+",
        default=[20.0, 60.0, 180.0],
        help="seconds from starting a replica to it serving; one run per value (the plots use the first)",
    )
    r.add_argument("--peak", type=float, default=12000.0, help="weekday peak, requests per hour")
    r.add_argument("--spike-factor", type=float, default=2.0, help="the unforecast spike multiplies demand by this")
    r.add_argument("--seed", type=int, default=7)
    r.add_argument(
        "--also-utilization",
        type=float,
        nargs="*",
        default=[1.0],
        help="extra predictive runs with these utilization targets (the cost/latency trade-off)",
    )
    r.add_argument("--max-replicas", type=int, default=16)
    s = sub.add_parser("load-step", help="time from a load step to a new worker serving, on this machine")
    s.add_argument("--out", type=Path, default=Path("benchmarks/reports/scaling-load-step"))
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--requests", type=int, default=20)
    return p.parse_args(argv)


def run_replay(args: argparse.Namespace) -> dict:
    eval_day = HISTORY_START + timedelta(days=args.history_days)  # a Monday again when history is whole weeks
    trace = DailyTrace(peak_per_hour=args.peak, spike_at=eval_day + timedelta(hours=14), spike_factor=args.spike_factor)
    history = DailyTrace(peak_per_hour=args.peak)  # the spike is not in the history
    policy_config = PolicyConfig(max_replicas=args.max_replicas)
    service = ServiceModel(
        tokens_per_request=300.0,
        replica_tokens_per_second=policy_config.replica_tokens_per_second,
        latency_target_s=policy_config.target_backlog_tokens / policy_config.replica_tokens_per_second,
    )
    lag_threshold = round(policy_config.target_backlog_tokens / service.tokens_per_request)
    trained = SeasonalForecaster()
    train(trained, history, HISTORY_START, args.history_days, random.Random(args.seed + 1))

    runs: list[dict] = []
    timelines: dict[str, Outcome] = {}
    for startup in args.startup_s:
        model = replace(service, startup_s=startup)
        outcomes = []
        variants = [("predictive+reactive", policy_config)]
        variants += [
            (f"predictive+reactive (utilization {u:.0%})", replace(policy_config, utilization_target=u))
            for u in args.also_utilization
        ]
        for name, config in [*variants, ("reactive", policy_config), ("keda-lag", policy_config)]:
            forecaster = None
            if name.startswith("predictive"):
                forecaster = SeasonalForecaster()
                train(forecaster, history, HISTORY_START, args.history_days, random.Random(args.seed + 1))
            policy = (
                KedaLagPolicy("sim", lag_threshold, min_replicas=1, max_replicas=args.max_replicas)
                if name == "keda-lag"
                else Autoscaler("sim", config, predictive=forecaster is not None)
            )
            outcome = replay(
                policy,
                trace,
                eval_day,
                24,
                model,
                random.Random(args.seed),
                initial_replicas=1,
                forecaster=forecaster,
                horizon=config.horizon,
            )
            outcome.policy = name
            outcomes.append(outcome)
            if startup == args.startup_s[0] and "(" not in name:
                timelines[name] = outcome
        runs.append({"startup_s": startup, "outcomes": outcomes})

    lines = [
        "# Scaling policies replayed on a synthetic day",
        "",
        f"Trace: night {trace.night_per_hour:.0f} req/h, morning ramp 07:00-09:30 to {trace.peak_per_hour:.0f} req/h, "
        f"evening decline, and an unforecast x{trace.spike_factor:g} spike at 14:00 for {trace.spike_minutes:.0f} min. "
        f"The forecast learned {args.history_days} days of the same trace without the spike (weekends at "
        f"{trace.weekend_factor:.0%}).",
        f"Service model: {service.tokens_per_request:.0f} tokens per request, {service.replica_tokens_per_second:.0f} "
        f"tokens/s per replica, latency target {service.latency_target_s:.0f} s (the reactive target backlog "
        f"{policy_config.target_backlog_tokens:.0f} tokens / replica speed), decisions every "
        f"{service.decide_every_s:.0f} s, steps of {service.step_s:.0f} s. KEDA rule: ceil(lag / {lag_threshold}) "
        f"(the same backlog target in messages), min 1, no window. ferry: windows up {policy_config.up_window} / down "
        f"{policy_config.down_window}, cooldowns up {policy_config.up_cooldown} / down {policy_config.down_cooldown}, "
        f"horizon {policy_config.horizon}, utilization target {policy_config.utilization_target:.0%}.",
        "",
        "| replica start-up | policy | worker-hours | cost vs reactive | cost vs KEDA | time over target | requests "
        "over target | scale events | max replicas |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        by = {o.policy: o for o in run["outcomes"]}
        for o in run["outcomes"]:
            lines.append(
                f"| {run['startup_s']:.0f} s | {o.policy} | {o.worker_seconds / 3600:.1f} | "
                f"{o.worker_seconds / by['reactive'].worker_seconds - 1:+.0%} | "
                f"{o.worker_seconds / by['keda-lag'].worker_seconds - 1:+.0%} | {o.seconds_over_target / 60:.0f} min | "
                f"{o.requests_over_target / max(o.requests, 1):.1%} | {o.scale_events} | {o.max_replicas} |"
            )
    predictive = runs[0]["outcomes"][0]
    wape = predictive.forecast_wape
    lines += [
        "",
        f"Forecast accuracy on the replayed day (per-minute buckets, forecast made before each bucket): WAPE {wape:.1%}"
        if wape is not None
        else "Forecast accuracy: no data",
        f"(training history: WAPE {trained.accuracy.wape:.1%} over {trained.accuracy.buckets} buckets).",
    ]
    report = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(report + "\n\n![replicas](replicas.png)\n")
    (args.out / "report.json").write_text(
        json.dumps(
            {
                "runs": [{"startup_s": r["startup_s"], "outcomes": [_summary(o) for o in r["outcomes"]]} for r in runs],
                "forecast_wape": wape,
            },
            indent=2,
        )
    )
    _plot(timelines, args.out / "replicas.png", args.startup_s[0], service.latency_target_s)
    print(report)
    print(f"\nwritten to {args.out}/ (report.md, report.json, replicas.png)")
    return {"runs": runs}


def _summary(o: Outcome) -> dict:
    return {
        "policy": o.policy,
        "worker_hours": o.worker_seconds / 3600,
        "minutes_over_target": o.seconds_over_target / 60,
        "requests": o.requests,
        "requests_over_target": o.requests_over_target,
        "scale_events": o.scale_events,
        "max_replicas": o.max_replicas,
        "forecast_wape": o.forecast_wape,
    }


def _plot(timelines: dict[str, Outcome], path: Path, startup: float, latency_target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, mid, bottom) = plt.subplots(3, 1, figsize=(12, 10), sharex=True)
    any_run = next(iter(timelines.values()))
    times = [t for t, *_ in any_run.timeline]
    top.plot(times, [r for _, r, *_ in any_run.timeline], color="black")
    top.set_ylabel("demand (req/h)")
    top.set_title(f"Replayed day; replicas paid for and expected wait (replica start-up {startup:.0f} s)")
    for name, o in timelines.items():
        mid.step(times, [paid for _, _, paid, _, _ in o.timeline], where="post", label=name)
        bottom.plot(times, [wait for *_, wait in o.timeline], label=name, linewidth=0.8)
    mid.set_ylabel("replicas (paid)")
    mid.legend()
    bottom.set_ylabel("expected wait (s, capped at 600)")
    bottom.set_yscale("symlog", linthresh=10)
    bottom.axhline(latency_target, color="red", linestyle=":", linewidth=1, label="latency target")
    bottom.legend()
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "replay":
        run_replay(args)
        return 0
    from benchmarks.scaling.load_step import run_load_step

    results = run_load_step(args.out, args.repeats, args.requests)
    print(results)
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
