"""Ops view: ``python -m services.scaler.ops [--url http://127.0.0.1:8090] [--decisions 5] [MODEL...]``.

Per model: replicas (running, wanted), lag, token backlog, demand, forecast and its accuracy, tier, from the running
scaler's /metrics; then its last decisions with their reasons, from PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio
from collections import defaultdict
from datetime import timedelta

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from services.scaler.adapters import ScalerStore
from services.scaler.config import ScalerSettings
from shared.contracts import utc_now
from shared.db import connect_pool
from shared.settings import CommonSettings

GAUGES = {
    "ferry_scaler_replicas": "replicas",
    "ferry_scaler_desired_replicas": "desired",
    "ferry_scaler_lag_requests": "lag",
    "ferry_scaler_backlog_tokens": "backlog_tokens",
    "ferry_scaler_demand_per_hour": "req/h",
    "ferry_scaler_forecast_per_hour": "forecast req/h",
    "ferry_scaler_forecast_wape": "forecast WAPE",
}


def live_values(metrics_text: str) -> dict[str, dict[str, float | str]]:
    """Per model: the scaler's gauges by short name, and its tier."""
    found: dict[str, dict[str, float | str]] = defaultdict(dict)
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            model = sample.labels.get("model")
            if model is None:
                continue
            if sample.name in GAUGES:
                found[model][GAUGES[sample.name]] = sample.value
            elif sample.name == "ferry_scaler_tier" and sample.value == 1:
                found[model]["tier"] = sample.labels["tier"]
    return found


async def report(url: str | None, models: list[str], decisions: int) -> str:
    common = CommonSettings()
    live: dict[str, dict[str, float | str]] = {}
    if url:
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                live = live_values((await http.get(f"{url.rstrip('/')}/metrics")).text)
        except httpx.HTTPError as exc:
            live = {}
            print(f"(scaler at {url} not reachable: {exc}; showing recorded decisions only)")
    pool = await connect_pool(common.postgres_dsn, wait_seconds=5)
    lines: list[str] = []
    try:
        store = ScalerStore(pool)
        now = utc_now()
        names = models or sorted(set(live) | set(await store.models_seen(now - timedelta(days=1))))
        if not names:
            return "no model has been scaled yet (is the scaler running?)"
        for model in names:
            values = live.get(model, {})
            wape, buckets = await store.forecast_accuracy(model, now - timedelta(days=1))
            lines.append(f"== {model}  tier {values.get('tier', '?')}")
            shown = ", ".join(f"{k} {_fmt(values[k])}" for k in GAUGES.values() if k in values and k != "forecast WAPE")
            lines.append(f"   now: {shown or '(no live values)'}")
            accuracy = f"{wape:.1%} over {buckets} bucket(s) in 24 h" if wape is not None else "not enough data yet"
            lines.append(f"   forecast error (WAPE, recorded): {accuracy}")
            for d in await store.decisions(model, decisions):
                forecast = f" forecast {d.forecast_per_hour:.0f}/h" if d.forecast_per_hour is not None else ""
                lines.append(
                    f"   {d.decided_at:%Y-%m-%d %H:%M:%S} {d.action:<10} {d.current}->{d.desired} [{d.policy}, "
                    f"{d.tier}{forecast}] {d.reason}"
                )
    finally:
        await pool.close()
    return "\n".join(lines)


def _fmt(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:.0f}"


def main() -> None:
    settings = ScalerSettings()
    parser = argparse.ArgumentParser(prog="python -m services.scaler.ops", description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", help="models to show (default: every model scaled in the last day)")
    parser.add_argument("--url", default=f"http://{settings.host}:{settings.port}", help="the scaler's HTTP address")
    parser.add_argument("--decisions", type=int, default=5, help="last decisions to show per model")
    args = parser.parse_args()
    try:
        print(asyncio.run(report(args.url, args.models, args.decisions)))
    except asyncpg.UndefinedTableError:
        raise SystemExit("the scaler's tables are missing: apply migration 0005 (python -m shared.prepare)") from None


if __name__ == "__main__":
    main()
