"""Ports handed to processes that bind them later: free, outside the ephemeral range that outgoing connections use,
and never handed out twice."""

from __future__ import annotations

import socket

from shared.ports import _ephemeral_range, free_port


def test_ports_are_free_outside_the_ephemeral_range_and_never_given_twice() -> None:
    low, high = _ephemeral_range()
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(p < low or p > high for p in ports)
    for port in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free: nothing holds it
