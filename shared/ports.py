"""Ports for processes this machine starts and then waits for: the scaler's local workers, the tests' services, the
benchmarks' servers."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOWEST = 10_000
_given: set[int] = set()  # a port this process handed out is not handed out again, even before its owner binds it


def free_port() -> int:
    """A port that is free now and outside the kernel's ephemeral range.

    The process given a port binds it only once it has started: a worker does so after loading its model, tens of
    seconds later. A port from the ephemeral range can meanwhile become the local end of any outgoing connection
    (every Kafka client opens some), and the process then fails to bind it."""
    low, _ = _ephemeral_range()
    for _ in range(1000):
        port = random.randrange(_LOWEST, low)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port between {_LOWEST} and {low}")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return (low, high) if low > _LOWEST + 1000 else (32768, 60999)
