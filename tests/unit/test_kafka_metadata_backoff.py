"""aiokafka's clients wait their retry backoff after a metadata update that reached no broker (shared.kafka)."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaClient

from shared.kafka import back_off_failed_metadata_updates


async def test_a_client_asking_for_metadata_in_a_loop_while_no_broker_answers_does_not_spin() -> None:
    """What a producer's sender does while the broker is down (it holds records for a partition whose leader it no
    longer knows): without the backoff, each update fails at once and the loop runs thousands of times a second."""
    back_off_failed_metadata_updates()
    back_off_failed_metadata_updates()  # idempotent: still one wait per failed update
    client = AIOKafkaClient(bootstrap_servers="127.0.0.1:9", retry_backoff_ms=100)  # never started: no broker known
    synchronizer = asyncio.create_task(client._md_synchronizer())
    try:
        attempts, started = 0, time.monotonic()
        while time.monotonic() - started < 0.5:
            assert await client.force_metadata_update() is False
            attempts += 1
    finally:
        synchronizer.cancel()
    assert 2 <= attempts <= 6  # one per 100 ms backoff (a doubled wait would allow at most 3)
