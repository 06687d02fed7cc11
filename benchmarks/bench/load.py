"""When requests are sent: arrival offsets for the load shapes `vllm bench serve` offers, and recorded traces."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

LoadShape = Literal["burst", "poisson", "gamma", "ramp"]
LOAD_SHAPES: tuple[str, ...] = ("burst", "poisson", "gamma", "ramp")


@dataclass(frozen=True)
class TraceEntry:
    """One recorded request: when it was sent, relative to the trace start, and its token counts."""

    offset_s: float
    prompt_tokens: int
    output_tokens: int


def arrival_offsets(
    n: int,
    shape: LoadShape,
    rate: float | None = None,
    burstiness: float = 1.0,
    ramp_to: float | None = None,
    seed: int = 0,
) -> list[float]:
    """Seconds from the start at which each of `n` requests is sent, non-decreasing.

    burst: all at 0 (pair it with a concurrency cap). poisson: exponential gaps at `rate` req/s. gamma: gamma gaps
    with shape `burstiness` and mean 1/`rate` (below 1 burstier, above 1 more regular, inf constant). ramp: the rate
    rises linearly from `rate` to `ramp_to` across the requests, gap i drawn at request i's rate.
    """
    _check_args(n, shape, rate, burstiness, ramp_to)
    if n == 0:
        return []
    if shape == "burst":
        return [0.0] * n
    assert rate is not None
    if shape == "poisson":
        burstiness = 1.0
    if shape == "ramp":
        assert ramp_to is not None
        rates = rate + (ramp_to - rate) * np.arange(n) / max(n - 1, 1)
    else:
        rates = np.full(n, rate)
    offsets = np.cumsum(_gaps(rates, burstiness, np.random.default_rng(seed)))
    if shape != "ramp" and offsets[-1] > 0:
        # vLLM rescales a constant-rate schedule to end exactly at n / rate, so throughput does not vary by seed.
        offsets *= (n / rate) / offsets[-1]
    return [float(offset) for offset in offsets]


def read_trace(path: Path) -> list[TraceEntry]:
    """Read a JSONL trace of {"offset_s", "prompt_tokens", "output_tokens"} lines, sorted by offset."""
    with path.open(encoding="utf-8") as lines:
        return parse_trace(lines, source=str(path))


def parse_trace(lines: Iterable[str], source: str = "trace") -> list[TraceEntry]:
    """Parse JSONL trace lines, sorted by offset; blank lines and extra keys are ignored, ValueError names the line."""
    entries = [
        _parse_trace_line(line, f"{source}:{number}") for number, line in enumerate(lines, start=1) if line.strip()
    ]
    if not entries:
        raise ValueError(f"{source}: the trace has no entries")
    return sorted(entries, key=lambda entry: entry.offset_s)


def _check_args(n: int, shape: str, rate: float | None, burstiness: float, ramp_to: float | None) -> None:
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if shape not in LOAD_SHAPES:
        raise ValueError(f"unknown load shape {shape!r}; expected one of {', '.join(LOAD_SHAPES)}")
    if not burstiness > 0:
        raise ValueError(f"burstiness must be positive, got {burstiness}")
    if shape == "burst":
        return
    if rate is None or not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"the {shape} shape needs a finite, positive rate in requests/s, got {rate}")
    if shape == "ramp":
        if ramp_to is None or not (math.isfinite(ramp_to) and ramp_to > 0):
            raise ValueError(f"the ramp shape needs a finite, positive ramp_to in requests/s, got {ramp_to}")
    elif ramp_to is not None:
        raise ValueError(f"ramp_to only applies to the ramp shape, not {shape}")


def _gaps(rates: np.ndarray, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """Gamma gaps with shape `burstiness` and mean 1/rate, as vLLM draws them (burstiness 1 is exponential)."""
    if math.isinf(burstiness):
        return 1.0 / rates
    return rng.gamma(shape=burstiness, scale=1.0 / (rates * burstiness))


def _parse_trace_line(line: str, where: str) -> TraceEntry:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    offset_s = record.get("offset_s")
    if isinstance(offset_s, bool) or not isinstance(offset_s, int | float) or not math.isfinite(offset_s):
        raise ValueError(f"{where}: offset_s must be a number of seconds, got {offset_s!r}")
    if offset_s < 0:
        raise ValueError(f"{where}: offset_s must be non-negative, got {offset_s!r}")
    counts = {}
    for key in ("prompt_tokens", "output_tokens"):
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {key} must be a positive integer, got {value!r}")
        counts[key] = value
    return TraceEntry(offset_s=float(offset_s), **counts)
