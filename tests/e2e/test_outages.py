"""When PostgreSQL, Redis or Kafka stops answering, the ingress answers in bounded time: known keys keep working,
unknown ones get 503 at once, rate limits are skipped or enforced as configured, and a request Kafka does not take gets
503. The servers are the real ones. A TCP proxy in front of PostgreSQL and Redis stops passing bytes, which is what a
stopped server or a network partition looks like to a client (connections stay open, nothing comes back). Kafka
clients connect to the address the broker advertises, past any proxy, so the broker itself is paused (SIGSTOP)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shared.kafka import PRODUCER_OPTIONS, ensure_topics
from tests.e2e.platform import DEFAULT_MODEL, ROOT, TINY_MODEL, Platform, Service, start_extra_ingress, stop_service
from tests.e2e.test_flow_control import cancellation_of

CHAT = "/v1/chat/completions"


class FreezableProxy:
    """A TCP proxy to ``host:port`` that can be frozen: while frozen it accepts connections and holds every byte."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._flowing = threading.Event()
        self._flowing.set()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="freezable-proxy", daemon=True)
        self.port = 0

    def __enter__(self) -> FreezableProxy:
        self._thread.start()
        assert self._started.wait(10), "the proxy did not start"
        return self

    def __exit__(self, *_: object) -> None:
        self._flowing.set()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()
        server.close()

    async def _serve(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        try:
            server_in, server_out = await asyncio.open_connection(*self._target)
        except OSError:
            client_out.close()
            return
        await asyncio.gather(
            self._pipe(client_in, server_out), self._pipe(server_in, client_out), return_exceptions=True
        )

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                while not self._flowing.is_set():
                    await asyncio.sleep(0.02)
                sink.write(data)
                await sink.drain()
        finally:
            sink.close()


def through(url: str, proxy: FreezableProxy) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


@dataclass
class Outages:
    postgres: FreezableProxy
    redis: FreezableProxy
    lenient: str  # base URL of an ingress that lets requests through unchecked while Redis is down (the default)
    strict: str  # one with FERRY_INGRESS_RATE_LIMITS_UNAVAILABLE=refuse


@pytest.fixture(scope="module")
def outages(platform: Platform) -> Iterator[Outages]:
    postgres = urlsplit(platform.env["FERRY_POSTGRES_DSN"])
    redis = urlsplit(platform.common.redis_url)
    with (
        FreezableProxy(postgres.hostname or "127.0.0.1", postgres.port or 5432) as pg_proxy,
        FreezableProxy(redis.hostname or "127.0.0.1", redis.port or 6379) as redis_proxy,
    ):
        started: list[Service] = []
        try:
            for name, mode in (("lenient", "allow"), ("strict", "refuse")):
                settings = {
                    "FERRY_POSTGRES_DSN": through(platform.env["FERRY_POSTGRES_DSN"], pg_proxy),
                    "FERRY_REDIS_URL": through(platform.common.redis_url, redis_proxy),
                    "FERRY_INGRESS_POSTGRES_TIMEOUT_S": "1",
                    "FERRY_INGRESS_REDIS_TIMEOUT_S": "0.3",
                    "FERRY_INGRESS_RATE_LIMITS_UNAVAILABLE": mode,
                }
                started.append(start_extra_ingress(platform, name, settings))
            yield Outages(pg_proxy, redis_proxy, *(f"http://127.0.0.1:{s.port}" for s in started))
        finally:
            for service in started:
                stop_service(service)


def chat(base_url: str, key: str) -> httpx.Response:
    body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "ignore_eos": True}
    return httpx.post(f"{base_url}{CHAT}", json=body, headers={"authorization": f"Bearer {key}"}, timeout=60)


def assert_unavailable(response: httpx.Response, code: str) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["type"] == "service_unavailable_error" and error["code"] == code and error["message"]
    assert response.headers["retry-after"] == "1"


def unchecked(base_url: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    match = re.search(r"^ferry_ingress_limits_unchecked_total ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, "the ingress exports ferry_ingress_limits_unchecked_total"
    return float(match.group(1))


def test_while_redis_hangs_requests_pass_unchecked_or_get_503_as_configured(
    platform: Platform, outages: Outages
) -> None:
    key = platform.new_tenant(f"redis-outage-{uuid.uuid4().hex[:6]}", "--rpm", "100")
    for url in (outages.lenient, outages.strict):
        assert chat(url, key).status_code == 200
    before = unchecked(outages.lenient)
    outages.redis.freeze()
    try:
        started = time.monotonic()
        served = chat(outages.lenient, key)
        assert served.status_code == 200, served.text
        assert served.json()["choices"][0]["message"]["content"]
        assert unchecked(outages.lenient) == before + 1
        assert_unavailable(chat(outages.strict, key), "rate_limits_unavailable")
        # bounded by the Redis timeouts (0.3 s here), not by a client or socket default
        assert time.monotonic() - started < 30
    finally:
        outages.redis.thaw()
    deadline = time.monotonic() + 30
    while (response := chat(outages.strict, key)).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)  # the limiter skips Redis for a second after a failure
    assert response.status_code == 200, response.text
    assert unchecked(outages.lenient) == before + 1  # counted again once Redis answers
    # the lenient instance may have failed just before the thaw too (its settlement is retried): it skips Redis for a
    # second after its last failure
    time.sleep(1.5)
    chat(outages.lenient, key).raise_for_status()
    assert unchecked(outages.lenient) == before + 1


def test_while_postgres_hangs_known_keys_keep_working_and_unknown_ones_get_503(
    platform: Platform, outages: Outages
) -> None:
    known = platform.new_tenant(f"pg-known-{uuid.uuid4().hex[:6]}")
    unknown = platform.new_tenant(f"pg-unknown-{uuid.uuid4().hex[:6]}")
    assert chat(outages.lenient, known).status_code == 200  # checked once, before the outage
    outages.postgres.freeze()
    try:
        time.sleep(1.0)  # past the key-check cache (0.5 s in these tests): the database is asked again
        started = time.monotonic()
        served = chat(outages.lenient, known)
        assert served.status_code == 200, served.text
        assert_unavailable(chat(outages.lenient, unknown), "database_unavailable")
        models = httpx.get(f"{outages.lenient}/v1/models", headers={"authorization": f"Bearer {known}"}, timeout=60)
        assert models.status_code == 200 and TINY_MODEL in {m["id"] for m in models.json()["data"]}
        assert time.monotonic() - started < 30
    finally:
        outages.postgres.thaw()
    deadline = time.monotonic() + 30
    while (response := chat(outages.lenient, unknown)).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert response.status_code == 200, response.text


def infra_kafka_pid(action: str) -> int:
    """The pid of the Kafka broker that infra/platform runs for this checkout; skips the test when there is none."""
    pidfile = Path(os.environ.get("FERRY_STATE", ROOT / ".state")) / "run" / "kafka.pid"
    if not pidfile.is_file():
        pytest.skip(f"Kafka is not run by infra/platform for this checkout (no {pidfile}): nothing to {action}")
    return int(pidfile.read_text())


@contextmanager
def kafka_paused() -> Iterator[None]:
    """Freezes the Kafka broker that infra/platform runs for this checkout (SIGSTOP), and resumes it on leaving. Paused
    for less than the consumers' session timeouts (6-10 s), the session's services keep their partitions."""
    pid = infra_kafka_pid("pause")
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@asynccontextmanager
async def kafka_stopped(pid: int) -> AsyncIterator[None]:
    """Stops the broker (SIGTERM; ``pid`` from infra_kafka_pid) and starts it again with infra/platform on leaving."""
    os.kill(pid, signal.SIGTERM)
    while Path(f"/proc/{pid}").exists():
        await asyncio.sleep(0.2)
    try:
        yield
    finally:
        started = await asyncio.create_subprocess_exec(str(ROOT / "infra" / "platform"), "infra", cwd=ROOT)
        assert await asyncio.wait_for(started.wait(), 180) == 0


async def test_while_kafka_hangs_a_request_gets_503_at_the_publish_timeout_its_charge_back_and_a_cancel(
    platform: Platform,
) -> None:
    ingress = start_extra_ingress(platform, "kafka-outage", {"FERRY_INGRESS_PUBLISH_TIMEOUT_S": "1"})
    # 600 tokens a minute: the 501 charged for the refused request must come back for the next one (201) to fit
    key = platform.new_tenant(f"kafka-outage-{uuid.uuid4().hex[:6]}", "--tpm", "600")
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{ingress.port}", headers={"authorization": f"Bearer {key}"}, timeout=60
        ) as client:

            async def chat(max_tokens: int) -> httpx.Response:
                asked = [{"role": "user", "content": "hi"}]
                body = {"model": TINY_MODEL, "messages": asked, "max_tokens": max_tokens, "ignore_eos": True}
                return await client.post(CHAT, json=body)

            with kafka_paused():
                started = time.monotonic()
                refused = await chat(500)
                waited = time.monotonic() - started
            assert_unavailable(refused, "queue_unavailable")
            assert waited < 10  # the 1 s publish timeout, not the Kafka client's 40 s request timeout
            # the record may still reach Kafka from the producer's buffer once the broker is back: a cancel follows it
            cancelled = await cancellation_of(platform, refused.headers["x-request-id"])
            assert cancelled.reason == "requested" and cancelled.model == TINY_MODEL
            deadline = time.monotonic() + 30
            while (served := await chat(200)).status_code == 503 and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            assert served.status_code == 200, served.text  # not 429: the refused request's tokens were refunded
            assert served.json()["choices"][0]["message"]["content"]
    finally:
        stop_service(ingress)


@pytest.mark.parametrize("outage_s", [5, 45])
async def test_a_kafka_restart_leaves_no_stream_hanging_and_the_logs_readable(
    platform: Platform, outage_s: int
) -> None:
    """The broker stops (SIGTERM) while streams run, and starts again ``outage_s`` later. Each stream ends, with [DONE]
    or an error event, and none hangs; requests are served again once the broker is back. The services' logs keep a
    few lines about the outage. Before, aiokafka's clients retried without waiting: one worker spun a core and logged
    about 17,000 lines a second until the broker was back. 45 s is longer than the producers' request timeout (40 s)."""
    pid = infra_kafka_pid("restart")
    logs_before = {s.name: len(platform.log(s.name).splitlines()) for s in platform.services}
    body = {
        "model": DEFAULT_MODEL,  # a real model's pace: generating while the broker is away, replies piling up
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 300,
        "ignore_eos": True,
        "stream": True,
    }
    async with httpx.AsyncClient(base_url=platform.base_url, headers=platform.auth, timeout=120) as client:
        first_tokens = [asyncio.Event() for _ in range(3)]

        async def stream(seen_first: asyncio.Event) -> list[str]:
            events: list[str] = []
            async with client.stream("POST", CHAT, json=body) as response:
                assert response.status_code == 200, await response.aread()
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        events.append(line.removeprefix("data: "))
                        seen_first.set()
            return events

        streams = [asyncio.create_task(stream(seen)) for seen in first_tokens]
        async with asyncio.timeout(60):
            await asyncio.gather(*(seen.wait() for seen in first_tokens))
        async with kafka_stopped(pid):
            await asyncio.sleep(outage_s)

        async with asyncio.timeout(180):  # none hangs
            ended = await asyncio.gather(*streams)
        for events in ended:
            assert events[-1] == "[DONE]" or '"error"' in events[-1], events[-3:]

        deadline = time.monotonic() + 90
        body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        while (served := await client.post(CHAT, json=body)).status_code != 200 and time.monotonic() < deadline:
            await asyncio.sleep(1)
        assert served.status_code == 200, served.text
        # and every request, whichever partition of the topics on its way its id falls on, within a minute
        async with asyncio.timeout(60):
            after = await asyncio.gather(*(client.post(CHAT, json=body) for _ in range(12)))
        assert [r.status_code for r in after] == [200] * len(after), [r.text for r in after if r.status_code != 200]

    for name, before in logs_before.items():
        kafka_lines = [line for line in platform.log(name).splitlines()[before:] if " aiokafka" in line]
        assert len(kafka_lines) < 300, f"{name}: {len(kafka_lines)} lines from aiokafka, e.g. {kafka_lines[-1]}"


async def test_a_service_producer_publishes_again_after_records_expired_while_the_broker_was_away(
    platform: Platform,
) -> None:
    """Records that a producer could not deliver before its request timeout fail, and the next ones go through once
    the broker is back. The services' producers are not idempotent (shared.kafka.PRODUCER_OPTIONS): aiokafka's
    idempotent producer holds such records for ever (this test fails on it), and where some did expire, it refused
    every later record of their partitions for good (OutOfOrderSequenceNumber, seen through `up` after a 50 s restart).
    The request timeout is cut to 2 s here to make records expire."""
    topic = f"{platform.common.topic_prefix}expiry-{uuid.uuid4().hex[:8]}"
    await ensure_topics(platform.common, [topic], partitions=1)
    producer = AIOKafkaProducer(
        bootstrap_servers=platform.common.kafka_bootstrap, request_timeout_ms=2000, **PRODUCER_OPTIONS
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"before", key=b"k")
        async with kafka_stopped(infra_kafka_pid("stop")):
            pending = [await producer.send(topic, b"lost %d" % i, key=b"k") for i in range(3)]
            async with asyncio.timeout(30):  # an idempotent producer never gives them up: it waits for the broker
                outcomes = await asyncio.gather(*pending, return_exceptions=True)
            assert all(isinstance(o, KafkaError) for o in outcomes), outcomes
        deadline = time.monotonic() + 60
        while True:
            try:
                await producer.send_and_wait(topic, b"after", key=b"k")
                break
            except KafkaError as exc:  # the broker is starting; a refusal for good would repeat until the deadline
                assert time.monotonic() < deadline, f"refused after the broker came back: {exc!r}"
                await asyncio.sleep(1)
    finally:
        await producer.stop()
