"""Logging set-up: one line per record, with the service name. Loggers never receive prompt or completion text."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable


class QuietRepeats(logging.Filter):
    """Passes a Kafka client's message once per ``window_s`` and counts its repeats into the next one that passes.

    While the broker is down, each aiokafka client in a service logs the same few errors every retry (100 ms): about
    185 lines a second in a worker, measured here, hours of them in a long outage. The first of each still shows at
    once, and the count says how long it went on."""

    def __init__(
        self,
        prefixes: tuple[str, ...] = ("aiokafka",),
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.prefixes, self.window_s, self.clock = prefixes, window_s, clock
        self._passed: dict[tuple[str, str], tuple[float, int]] = {}  # (logger, message template) -> (when, repeats)

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        key, now = (record.name, str(record.msg)), self.clock()
        passed = self._passed.get(key)
        if passed is not None and now - passed[0] < self.window_s:
            self._passed[key] = (passed[0], passed[1] + 1)
            return False
        if passed is not None and passed[1]:
            record.msg = f"{record.msg} (repeated {passed[1]} times since it was last shown)"
        self._passed[key] = (now, 0)
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s"))
    handler.addFilter(QuietRepeats())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("shared", "services", "__main__"):
        logging.getLogger(name).setLevel(level.upper())
