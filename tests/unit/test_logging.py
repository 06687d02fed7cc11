"""The log filter that keeps a Kafka outage from flooding the services' logs."""

from __future__ import annotations

import logging

from shared.logging import QuietRepeats


def record(name: str, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)


def test_a_kafka_client_s_repeated_error_shows_once_per_window_with_the_count_of_its_repeats() -> None:
    now = [0.0]
    quiet = QuietRepeats(window_s=10.0, clock=lambda: now[0])
    shown = []
    for step in range(250):  # 25 s of an error every 100 ms, as aiokafka retries while the broker is down
        now[0] = step * 0.1
        r = record("aiokafka", "Unable connect to node with id %s: %s", 1, "Connection refused")
        if quiet.filter(r):
            shown.append((round(now[0], 1), r.getMessage()))
    assert shown == [
        (0.0, "Unable connect to node with id 1: Connection refused"),
        (10.0, "Unable connect to node with id 1: Connection refused (repeated 99 times since it was last shown)"),
        (20.0, "Unable connect to node with id 1: Connection refused (repeated 99 times since it was last shown)"),
    ]


def test_other_messages_and_other_loggers_pass_untouched() -> None:
    quiet = QuietRepeats(clock=lambda: 0.0)
    assert quiet.filter(record("aiokafka.consumer.fetcher", "Failed fetch messages from %s", 1))
    assert quiet.filter(record("aiokafka", "Unable to update metadata from %s", [1]))  # another message of aiokafka
    for _ in range(3):
        assert quiet.filter(record("services.worker.handlers", "request %s failed", "r1"))
