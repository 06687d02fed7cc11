"""Demand forecast per model: a seasonal profile (hour of week, else hour of day) scaled by an exponentially smoothed
level. Pure: no clients, no clock; observations and instants are passed in.

forecast(t) = level x seasonal(t), where seasonal(t) is the mean request rate seen in t's hour of the week (once at
least ``min_weeks`` weeks have been seen there), else in t's hour of the day (once ``min_days`` days have been seen),
interpolated linearly between the centres of the two nearest hours,
and level is an exponentially smoothed ratio of actual to seasonal demand (1.0 = "like usual"). Without any seasonal
profile yet the forecast is the smoothed rate itself. Every forecast says which of these it used, so a decision can be
explained in one line.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

HOUR = 3600.0


@dataclass(frozen=True)
class ForecastConfig:
    alpha: float = 0.3
    """Weight of the newest observation in the smoothed level (0..1)."""
    min_weeks: int = 2
    """Weeks an hour-of-week slot must have been seen before the weekly profile is trusted."""
    min_days: int = 1
    """Days an hour-of-day slot must have been seen before the daily profile is trusted."""
    level_bounds: tuple[float, float] = (0.25, 4.0)
    """The level is clamped to this range so one odd bucket cannot run the forecast away."""


@dataclass(frozen=True)
class Forecast:
    requests_per_hour: float
    basis: str
    """weekly, daily or level: which profile the forecast used."""
    seasonal_per_hour: float | None
    level: float

    def explain(self) -> str:
        if self.seasonal_per_hour is None:
            return f"{self.requests_per_hour:.0f} req/h (smoothed rate, no seasonal history yet)"
        profile = f"{self.basis} profile {self.seasonal_per_hour:.0f} x {self.level:.2f}"
        return f"{self.requests_per_hour:.0f} req/h ({profile})"


@dataclass
class _Slot:
    requests: float = 0.0
    seconds: float = 0.0
    periods: set[int] = field(default_factory=set)

    def rate_per_hour(self) -> float:
        return self.requests / self.seconds * HOUR if self.seconds else 0.0


@dataclass
class Accuracy:
    """How far forecasts made before each bucket were from what happened (weighted absolute percentage error)."""

    abs_error: float = 0.0
    actual: float = 0.0
    buckets: int = 0

    @property
    def wape(self) -> float | None:
        return self.abs_error / self.actual if self.actual else None


class SeasonalForecaster:
    """Learns one model's demand from (bucket start, requests, bucket seconds) observations in time order."""

    def __init__(self, config: ForecastConfig | None = None) -> None:
        self.config = config or ForecastConfig()
        self._weekly: dict[tuple[int, int], _Slot] = defaultdict(_Slot)
        self._daily: dict[int, _Slot] = defaultdict(_Slot)
        self._level = 1.0
        self._rate: float | None = None
        self.accuracy = Accuracy()

    def observe(self, start: datetime, requests: float, seconds: float) -> None:
        """Adds one bucket of actual demand. The forecast for that bucket, made before it is learned, is scored."""
        rate = requests / seconds * HOUR
        before = self.forecast(start)
        if self._rate is not None:
            self.accuracy.abs_error += abs(before.requests_per_hour - rate) * seconds / HOUR
            self.accuracy.actual += requests
            self.accuracy.buckets += 1
        seasonal = self._seasonal(start)[1]
        a = self.config.alpha
        if seasonal:
            low, high = self.config.level_bounds
            self._level = min(high, max(low, (1 - a) * self._level + a * rate / seasonal))
        self._rate = rate if self._rate is None else (1 - a) * self._rate + a * rate
        week, day = _week_id(start), _day_id(start)
        weekly = self._weekly[(start.weekday(), start.hour)]
        weekly.requests += requests
        weekly.seconds += seconds
        weekly.periods.add(week)
        daily = self._daily[start.hour]
        daily.requests += requests
        daily.seconds += seconds
        daily.periods.add(day)

    def forecast(self, at: datetime) -> Forecast:
        basis, seasonal = self._seasonal(at)
        if seasonal is None:
            return Forecast(self._rate or 0.0, "level", None, self._level)
        return Forecast(self._level * seasonal, basis, seasonal, self._level)

    def peak(self, start: datetime, horizon: timedelta, step: timedelta = timedelta(minutes=15)) -> Forecast:
        """The highest forecast between ``start`` and ``start + horizon`` (scaling ahead must cover the peak)."""
        best = self.forecast(start)
        t = start + step
        while t <= start + horizon:
            f = self.forecast(t)
            if f.requests_per_hour > best.requests_per_hour:
                best = f
            t += step
        return best

    def _seasonal(self, at: datetime) -> tuple[str, float | None]:
        """The profile's rate at ``at``, interpolated between the centres of its two nearest hour slots, so a ramp
        within an hour is not read as a change of level."""
        shifted = at - timedelta(minutes=30)
        before = shifted.replace(minute=0, second=0, microsecond=0)
        frac = (shifted - before) / timedelta(hours=1)
        basis, a = self._slot(before, at)
        if a is None:
            return basis, None
        basis_b, b = self._slot(before + timedelta(hours=1), at)
        return basis, a if b is None else a * (1 - frac) + b * frac

    def _slot(self, hour: datetime, at: datetime) -> tuple[str, float | None]:
        # Only earlier weeks (days) count as history: the current one is what is being forecast.
        weekly = self._weekly.get((hour.weekday(), hour.hour))
        if weekly and len(weekly.periods - {_week_id(at)}) >= self.config.min_weeks:
            return "weekly", weekly.rate_per_hour()
        daily = self._daily.get(hour.hour)
        if daily and len(daily.periods - {_day_id(at)}) >= self.config.min_days:
            return "daily", daily.rate_per_hour()
        return "level", None


def _week_id(t: datetime) -> int:
    year, week, _ = t.isocalendar()
    return year * 100 + week


def _day_id(t: datetime) -> int:
    return t.toordinal()
