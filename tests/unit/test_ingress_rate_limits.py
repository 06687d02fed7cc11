"""How the ingress writes rate-limit reset times: Go's duration notation, as OpenAI's x-ratelimit-reset-* headers."""

from __future__ import annotations

import pytest

from services.ingress.rate_limits import go_duration


@pytest.mark.parametrize(
    ("ms", "written"),
    [(0, "0s"), (20, "20ms"), (999, "999ms"), (1000, "1s"), (1500, "1.5s"), (45_000, "45s"), (60_000, "1m0s"),
     (105_000, "1m45s"), (61_234, "1m1.234s"), (119_999, "1m59.999s")],
)  # fmt: skip
def test_reset_times_are_written_as_openai_writes_them(ms: int, written: str) -> None:
    assert go_duration(ms) == written
