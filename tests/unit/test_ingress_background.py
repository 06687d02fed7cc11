"""Background responses outliving the instance finishing them: which unfinished responses an instance claims, and
the end it stores from the answer it finds (stores, liveness and the reply topic are fakes here; tests/e2e/
test_responses.py stops and kills real instances)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.ingress import background
from services.ingress.adapters import LoggedEvent, NotStorable, StoredResponse, Unfinished
from services.ingress.background import BackgroundResponses, Keeper, Placement
from services.ingress.metrics import IngressMetrics
from services.ingress.rate_limits import Charge
from services.ingress.responses import TakenOverShell, read_event, stream_response
from services.ingress.serving import IndexedEvent
from shared.contracts import CompletionFinished, ReplyEvent, TokensGenerated, Usage, utc_now
from shared.outages import DependencyUnavailable


class FakeStore:
    def __init__(self, rows: dict[str, StoredResponse]) -> None:
        self.rows, self.saved = rows, {}  # type: ignore[var-annotated]

    async def unfinished(self) -> list[Unfinished]:
        return [
            Unfinished(response_id, row.finisher)
            for response_id, row in self.rows.items()
            if row.response["status"] == "queued"
        ]

    async def claim(self, response_id: str, finisher: str | None, claimer: str) -> StoredResponse | None:
        row = self.rows.get(response_id)
        if row is None or row.finisher != finisher:
            return None  # another instance was first
        self.rows[response_id] = row = StoredResponse(**{**row.__dict__, "finisher": claimer})
        return row

    async def save(self, tenant_id: str, response_id: str, stored: StoredResponse) -> bool:
        self.saved[response_id] = self.rows[response_id] = stored
        return True


class FakeEventLog:
    """The events of streamed responses, by response id."""

    def __init__(self, logs: dict[str, list[LoggedEvent]]) -> None:
        self.logs = logs

    async def exists(self, response_id: str) -> bool:
        return response_id in self.logs

    async def last(self, response_id: str) -> LoggedEvent | None:
        return self.logs[response_id][-1] if self.logs.get(response_id) else None

    async def append(self, response_id: str, event: LoggedEvent, expire_at: datetime) -> None:
        self.logs.setdefault(response_id, []).append(event)


class FakeLiveness:
    def __init__(self, alive: set[str]) -> None:
        self.beating = alive

    async def alive(self, instance_ids: set[str]) -> set[str]:
        return instance_ids & self.beating

    async def stop(self) -> None:
        pass


def queued(response_id: str, finisher: str | None) -> StoredResponse:
    response = {"id": response_id, "object": "response", "status": "queued", "output": [], "usage": None}
    return StoredResponse(
        [{"id": "msg_in", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        response,
        finish_by=utc_now() + timedelta(minutes=5),
        reply_topic="replies.ingress-a",
        finisher=finisher,
        reply_offset=7,
        input_count=1,
        tenant_id="t",
        charge=Charge("t", 29_000_000, "202612", 260),  # the estimate: its prompt, and max_output_tokens
    )


async def indexed(*events: ReplyEvent) -> AsyncIterator[IndexedEvent]:
    for event in events:
        yield 0, event
    await asyncio.Event().wait()  # no more, as a stream whose instance died


async def numbered(events: AsyncIterator[str], count: int) -> AsyncIterator[tuple[int, str]]:
    """The first ``count`` events, with their place."""
    n = 0
    async for text in events:
        yield n, text
        n += 1
        if n == count:
            return


class FakeLimiter:
    def __init__(self) -> None:
        self.settled: list[tuple[Charge, int]] = []

    async def settle(self, charge: Charge, actual_tokens: int) -> None:
        self.settled.append((charge, actual_tokens))


async def test_an_instance_claims_the_responses_of_stopped_instances_and_stores_their_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = FakeStore(
        {
            "resp_dead": replace(queued("resp_dead", "a"), streamed=True),  # its finisher beats no more
            "resp_alive": queued("resp_alive", "b"),  # its finisher beats: left to it
            # mine, from before a restart (no task finishes it), its prompt screened beside generation
            "resp_mine": replace(queued("resp_mine", "me"), screened_beside=True),
        }
    )
    read: list[tuple[str, int, str, bool]] = []

    def replies(request_id: str) -> list[ReplyEvent]:
        usage = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
        return [
            TokensGenerated(request_id=request_id, sequence=0, text="Hel", token_count=1, text_offset=0),
            TokensGenerated(request_id=request_id, sequence=1, text="lo.", token_count=1, text_offset=3),
            CompletionFinished(
                request_id=request_id, sequence=2, model="m", text="Hello.", finish_reason="stop", usage=usage
            ),
        ]

    class FakeReplay:
        """Every request's replies, as if read again from its reply topic."""

        def __init__(self, common: Any, topic: str) -> None:
            self.topic, self.started = topic, False
            replays.append(self)

        def expect(
            self, request_id: str, offset: int, deadline_at: datetime, cleared: bool
        ) -> AsyncIterator[ReplyEvent]:
            read.append((self.topic, offset, request_id, cleared))
            return self._read(request_id)

        async def _read(self, request_id: str) -> AsyncIterator[ReplyEvent]:
            while not self.started:  # nothing comes before the replay starts
                await asyncio.sleep(0.001)
            for reply in replies(request_id):
                yield reply

        def start(self) -> asyncio.Task[None]:
            self.started = True
            return asyncio.get_running_loop().create_task(asyncio.sleep(0))

    replays: list[FakeReplay] = []
    monkeypatch.setattr(background, "RepliesReplay", FakeReplay)
    metrics = IngressMetrics(CollectorRegistry())
    # what the instance that died had kept of resp_dead's stream: up to its first delta
    shell = TakenOverShell(store.rows["resp_dead"].response)
    async with contextlib.aclosing(stream_response(shell, indexed(replies("resp_dead")[0]))) as stream:
        kept = [LoggedEvent(n, text, ends=False) async for n, text in numbered(stream, 5)]
    assert read_event(kept[-1].text)[:2] == ("response.output_text.delta", 4)
    events = FakeEventLog({"resp_dead": list(kept)})
    limiter = FakeLimiter()
    liveness = FakeLiveness({"b", "me"})
    finishing = BackgroundResponses("me", None, store, None, liveness, metrics, events, limiter)  # type: ignore[arg-type]
    assert await finishing.take_over() == 2
    await asyncio.sleep(0.05)  # the finishing tasks run
    # read as the instances that asked read them: from their reply offset, resp_mine held until its prompt's verdict;
    # one replay of their one reply topic for both
    assert sorted(read) == [("replies.ingress-a", 7, "resp_dead", True), ("replies.ingress-a", 7, "resp_mine", False)]
    assert [(replay.topic, replay.started) for replay in replays] == [("replies.ingress-a", True)]
    ended = store.saved["resp_dead"]
    assert ended.response["status"] == "completed" and ended.finisher == "me" and ended.streamed
    assert ended.response["output"][0]["content"][0]["text"] == "Hello."
    assert [item["id"] for item in ended.conversation] == ["msg_in", "msg_dead"]  # what led to it, then its output
    assert "resp_alive" not in store.saved
    assert store.saved["resp_mine"].screened_beside  # kept for whoever takes it over next
    # the tenant's limits were charged the estimate when it was asked: settled with the 5 tokens used, once each
    assert limiter.settled == [(Charge("t", 29_000_000, "202612", 260), 5)] * 2
    assert ended.charge == Charge("t", 29_000_000, "202612", 260)
    # its stream's readers get every event after those its instance kept, numbered on: the whole text once, the end
    log = [read_event(event.text) for event in events.logs["resp_dead"]]
    assert [sequence for _, sequence, _ in log] == list(range(len(log)))
    assert "".join(fields["delta"] for kind, _, fields in log if kind == "response.output_text.delta") == "Hello."
    assert log[-1][0] == "response.completed" and log[-1][2]["response"] == ended.response
    assert [event.ends for event in events.logs["resp_dead"]] == [False] * (len(log) - 1) + [True]
    assert "resp_mine" not in events.logs  # not streamed
    assert await finishing.take_over() == 0  # nothing left: each is claimed once
    assert metrics.background_ended.labels("completed", "true")._value.get() == 2


async def test_a_response_answered_at_once_is_stored_ended_never_queued_or_raises() -> None:
    """A background response answered from the response cache: its end is stored before it is returned, and a store
    that cannot take it is the caller's error (a 503 or a 400), not a response left unstored."""
    row = queued("resp_hit", "me")
    usage = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
    answer = CompletionFinished(
        request_id="resp_hit", sequence=0, model="m", text="Hi.", finish_reason="stop", usage=usage
    )

    async def cached() -> AsyncIterator[IndexedEvent]:
        yield 0, answer

    placement = Placement(utc_now() + timedelta(minutes=5), "me", "replies.ingress-a", 7, streamed=True)

    def finishing(store: object, events: FakeEventLog) -> tuple[BackgroundResponses, Keeper]:
        metrics = IngressMetrics(CollectorRegistry())
        responses = BackgroundResponses("me", None, store, None, FakeLiveness({"me"}), metrics, events, FakeLimiter())  # type: ignore[arg-type]
        return responses, Keeper(store, None, "t", row.conversation, 1)  # type: ignore[arg-type]

    store, events = FakeStore({}), FakeEventLog({})
    responses, keep = finishing(store, events)
    ended = await responses.finish_at_once(TakenOverShell(row.response), keep, cached(), placement)
    assert ended["status"] == "completed" and store.saved["resp_hit"].response == ended  # stored once: its end
    assert [read_event(e.text)[0] for e in events.logs["resp_hit"]][-1] == "response.completed"

    class DownStore(FakeStore):
        async def save(self, tenant_id: str, response_id: str, stored: StoredResponse) -> bool:
            raise DependencyUnavailable("database")

    class InputNotStorable(FakeStore):
        async def save(self, tenant_id: str, response_id: str, stored: StoredResponse) -> bool:
            self.tries = getattr(self, "tries", 0) + 1
            raise NotStorable("the text holds the character U+0000")

    responses, keep = finishing(DownStore({}), FakeEventLog({}))
    with pytest.raises(DependencyUnavailable):
        await responses.finish_at_once(TakenOverShell(row.response), keep, cached(), placement)
    unstorable = InputNotStorable({})
    responses, keep = finishing(unstorable, FakeEventLog({}))
    with pytest.raises(NotStorable):  # its end as a failure (output_not_storable) is tried once, then the input
        await responses.finish_at_once(TakenOverShell(row.response), keep, cached(), placement)
    assert unstorable.tries == 2
