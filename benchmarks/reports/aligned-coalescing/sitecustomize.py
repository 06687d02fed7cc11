"""Counts the Kafka requests a process sends, by kind, and writes them to /tmp/probe/reqcount-PID.txt at exit."""

import atexit
import collections
import os

counts: collections.Counter[str] = collections.Counter()
try:
    from aiokafka import conn as _conn

    _original_send = _conn.AIOKafkaConnection.send

    def _counted_send(self, request, expect_response=True):  # type: ignore[no-untyped-def]
        counts[type(request).__name__] += 1
        return _original_send(self, request, expect_response)

    _conn.AIOKafkaConnection.send = _counted_send

    def _dump() -> None:
        with open(f"/tmp/probe/reqcount-{os.getpid()}.txt", "w") as f:
            f.write(repr(dict(counts)))

    atexit.register(_dump)
except ImportError:
    pass
