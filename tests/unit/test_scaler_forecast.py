from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.scaler.forecast import ForecastConfig, SeasonalForecaster

MONDAY = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday, 00:00


def feed(f: SeasonalForecaster, start: datetime, hours: int, rate_at) -> None:
    for h in range(hours):
        t = start + timedelta(hours=h)
        f.observe(t, rate_at(t), 3600)


def test_without_history_the_forecast_is_the_smoothed_rate() -> None:
    f = SeasonalForecaster(ForecastConfig(alpha=0.5))
    assert f.forecast(MONDAY).requests_per_hour == 0
    f.observe(MONDAY, 100, 3600)
    f.observe(MONDAY + timedelta(minutes=1), 10, 60)  # 600 req/h
    fc = f.forecast(MONDAY + timedelta(minutes=2))
    assert fc.basis == "level" and fc.seasonal_per_hour is None
    assert fc.requests_per_hour == pytest.approx(350)  # 0.5 x 100 + 0.5 x 600


def test_a_day_of_history_gives_the_daily_profile() -> None:
    f = SeasonalForecaster()
    feed(f, MONDAY, 24, lambda t: 1000 if t.hour == 9 else 100)
    fc = f.forecast(MONDAY + timedelta(days=1, hours=9, minutes=30))  # the centre of the 09:00 slot
    assert (fc.basis, fc.seasonal_per_hour, fc.level) == ("daily", 1000, 1.0)
    assert fc.requests_per_hour == 1000
    assert f.forecast(MONDAY + timedelta(days=1, hours=3)).requests_per_hour == 100
    # between slot centres the profile is interpolated: 09:00 is halfway from 08:30 (100) to 09:30 (1000)
    assert f.forecast(MONDAY + timedelta(days=1, hours=9)).requests_per_hour == pytest.approx(550)
    assert f.forecast(MONDAY + timedelta(days=1, hours=9, minutes=45)).requests_per_hour == pytest.approx(775)


def test_weekly_profile_wins_once_two_weeks_are_seen() -> None:
    f = SeasonalForecaster()
    # weekdays 09:00 busy (1000), weekends quiet (50)
    feed(f, MONDAY, 24 * 14, lambda t: (1000 if t.weekday() < 5 else 50) if t.hour == 9 else 100)
    saturday_9 = MONDAY + timedelta(days=19, hours=9, minutes=30)
    monday_9 = MONDAY + timedelta(days=14, hours=9, minutes=30)
    assert f.forecast(saturday_9).basis == "weekly"
    assert f.forecast(saturday_9).seasonal_per_hour == 50
    assert f.forecast(monday_9).seasonal_per_hour == 1000
    # the daily profile alone would average them: (10 x 1000 + 4 x 50) / 14
    daily_only = SeasonalForecaster(ForecastConfig(min_weeks=99))
    feed(daily_only, MONDAY, 24 * 14, lambda t: (1000 if t.weekday() < 5 else 50) if t.hour == 9 else 100)
    assert daily_only.forecast(saturday_9).seasonal_per_hour == pytest.approx((10 * 1000 + 4 * 50) / 14)


def test_level_follows_a_day_busier_than_usual() -> None:
    f = SeasonalForecaster(ForecastConfig(alpha=0.5))
    feed(f, MONDAY, 24, lambda t: 200)
    day2 = MONDAY + timedelta(days=1)
    f.observe(day2, 400, 3600)  # ratio 2: level 0.5 x 1 + 0.5 x 2 = 1.5
    fc = f.forecast(day2 + timedelta(hours=1, minutes=30))
    assert fc.level == pytest.approx(1.5)
    assert fc.requests_per_hour == pytest.approx(300)  # 1.5 x 200 (day 1's 01:00)


def test_peak_looks_across_the_horizon() -> None:
    f = SeasonalForecaster()
    feed(f, MONDAY, 24, lambda t: 1200 if t.hour == 9 else 100)
    peak = f.peak(MONDAY + timedelta(days=1, hours=9), timedelta(minutes=30))  # 09:00, 09:15, 09:30
    assert peak.requests_per_hour == 1200
    assert f.peak(MONDAY + timedelta(days=1, hours=7), timedelta(minutes=30)).requests_per_hour == 100


def test_accuracy_scores_each_forecast_made_before_its_bucket() -> None:
    f = SeasonalForecaster(ForecastConfig(alpha=1.0))
    f.observe(MONDAY, 100, 3600)  # the first bucket has no earlier forecast: not scored
    f.observe(MONDAY + timedelta(hours=1), 150, 3600)  # forecast 100 -> error 50
    f.observe(MONDAY + timedelta(hours=2), 150, 3600)  # forecast 150 -> error 0
    assert f.accuracy.buckets == 2
    assert f.accuracy.wape == pytest.approx(50 / 300)
