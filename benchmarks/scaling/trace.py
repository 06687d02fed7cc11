"""A synthetic demand trace: a weekday with a night trough, a morning ramp (07:00-09:30), a busy day, an evening
decline; weekends at 40%. The replayed day can carry an unforecast spike (not in the history)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class DailyTrace:
    night_per_hour: float = 300.0
    peak_per_hour: float = 12000.0
    weekend_factor: float = 0.4
    spike_at: datetime | None = None
    spike_minutes: float = 30.0
    spike_factor: float = 2.0

    def __call__(self, t: datetime) -> float:
        h = t.hour + t.minute / 60 + t.second / 3600
        if h < 7:
            shape = 0.0
        elif h < 9.5:  # morning ramp, smooth
            shape = (1 - math.cos(math.pi * (h - 7) / 2.5)) / 2
        elif h < 17:
            shape = 1.0 - 0.15 * math.sin(math.pi * (h - 9.5) / 7.5)  # a lunchtime dip
        elif h < 22:
            shape = (1 + math.cos(math.pi * (h - 17) / 5)) / 2
        else:
            shape = 0.0
        rate = self.night_per_hour + (self.peak_per_hour - self.night_per_hour) * shape
        if t.weekday() >= 5:
            rate *= self.weekend_factor
        if self.spike_at is not None and self.spike_at <= t < self.spike_at + timedelta(minutes=self.spike_minutes):
            rate *= self.spike_factor
        return rate
