"""Stored responses of the Responses API, and background mode (background true).

A background response is stored queued and answered at once; an ingress instance finishes it: it waits for the
answer, stores the response's end (completed, incomplete or failed) over the queued one, and adds it to its
conversation. Any instance reads or cancels it (handlers).

No background response is lost with the instance finishing it. Each instance beats in Redis (adapters.Liveness);
every few seconds each looks for unfinished responses whose finisher beats no more (stopped, or killed) and claims
them in PostgreSQL, one claimer each. The work went on meanwhile: the claimer reads the replies from the reply topic
the work was sent with, from the offset it had when the request left (the worker writes there whoever listens), as
that instance read them, stores the end, and for a streamed response keeps the events its readers have not had yet.
An instance that stops hands its background responses over this way without cancelling their work.
A response nobody finishes by its deadline, with BACKGROUND_STORE_GRACE_S to store its end, reads failed
(responses.as_of)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from services.ingress.adapters import (
    ConversationStore,
    DuplicateItem,
    EventLog,
    Liveness,
    LoggedEvent,
    NotStorable,
    RepliesReplay,
    ResponseStore,
    StoredResponse,
)
from services.ingress.metrics import IngressMetrics
from services.ingress.rate_limits import Charge, RateLimiter
from services.ingress.responses import (
    ResponseShell,
    Shell,
    TakenOverShell,
    ends_stream,
    read_event,
    stream_response,
    whole_response,
)
from services.ingress.serving import ApiError, IndexedEvent, merged, without_repeats
from shared.contracts import ReplyEvent
from shared.outages import DependencyUnavailable
from shared.settings import CommonSettings

logger = logging.getLogger(__name__)

EVENTS_KEPT_AFTER = timedelta(minutes=10)
"""How long after its deadline a streamed background response's events are kept for readers."""

BACKGROUND_STORE_GRACE_S = 30.0
"""Time the instance finishing a background response has after the request's deadline to store how it ended."""


@dataclass(frozen=True)
class Placement:
    """Who finishes a background response, and where its answer is heard: what another instance needs to finish it."""

    finish_by: datetime
    finisher: str
    """The instance id finishing it."""
    reply_topic: str
    reply_offset: int
    """The reply topic's offset before the request left: its answer comes after."""
    charge: Charge | None = None
    """What the tenant's limits were charged when it was asked: settled with the tokens used when it ends."""
    streamed: bool = False
    """Asked with stream true: its events are kept for readers as they come."""
    screened_beside: bool = False
    """Its prompt was screened beside generation: no output is read before the safety stage's verdict."""


@dataclass(frozen=True)
class Keeper:
    """Stores one response of a tenant, with the items that led to it; an answer in a conversation joins it."""

    store: ResponseStore
    conversations: ConversationStore
    tenant_id: str
    conversation: list[dict[str, Any]]
    """The items that led to it: its conversation's (or the response's it continues), then its own input."""
    input_count: int
    """How many of them are its own input (what joins its conversation, before its output)."""

    async def __call__(self, response: dict[str, Any]) -> dict[str, Any]:
        """Stores a finished response; returns it as the client gets it (store false when it could not be)."""
        try:
            await self.save(response)
        except (DependencyUnavailable, NotStorable) as exc:
            logger.warning("response %s could not be stored: %s", response["id"], exc)
            return response | {"store": False}
        return response

    async def save(self, response: dict[str, Any], placement: Placement | None = None) -> None:
        """Stores it (a queued background response: replaced when it ends, unless cancelled first); raises
        DependencyUnavailable or NotStorable. An answer (completed or cut short) joins its conversation."""
        stored = StoredResponse(
            [*self.conversation, *response["output"]],
            response,
            finish_by=placement.finish_by if placement else None,
            reply_topic=placement.reply_topic if placement else None,
            finisher=placement.finisher if placement else None,
            reply_offset=placement.reply_offset if placement else None,
            input_count=self.input_count,
            charge=placement.charge if placement else None,
            streamed=placement.streamed if placement else False,
            screened_beside=placement.screened_beside if placement else False,
        )
        if await self.store.save(self.tenant_id, response["id"], stored):
            await join_conversation(self.conversations, self.tenant_id, response, self.conversation, self.input_count)


async def join_conversation(
    conversations: ConversationStore,
    tenant_id: str,
    response: dict[str, Any],
    led_to: list[dict[str, Any]],
    input_count: int,
) -> None:
    """Adds an answered response's input (the last ``input_count`` items that led to it) and output to the
    conversation it names, if any."""
    conversation_id = (response.get("conversation") or {}).get("id")
    if conversation_id is None or response["status"] not in ("completed", "incomplete"):
        return
    items = [*led_to[len(led_to) - input_count :], *response["output"]]
    try:
        added = await conversations.add_items(tenant_id, conversation_id, items)
    except (DuplicateItem, NotStorable, DependencyUnavailable):
        added = False
    if not added:
        logger.warning(
            "response %s could not join conversation %s: it is gone, holds one of its items, or the database is down",
            response["id"],
            conversation_id,
        )


class BackgroundResponses:
    """The background responses this instance finishes: those it queued, and those it took over."""

    def __init__(
        self,
        instance_id: str,
        common: CommonSettings,
        store: ResponseStore,
        conversations: ConversationStore,
        liveness: Liveness,
        metrics: IngressMetrics,
        events: EventLog,
        limiter: RateLimiter,
    ) -> None:
        self.instance_id, self._common, self._store, self._conversations = instance_id, common, store, conversations
        self._liveness, self._metrics, self.events, self._limiter = liveness, metrics, events, limiter
        self._finishing: dict[str, asyncio.Task[None]] = {}
        self._replays: set[asyncio.Task[None]] = set()
        """Reading the reply topics of the responses taken over."""
        self.handing_over = False
        """Set when the instance stops: the work of what it was finishing goes on, for another instance."""

    async def start(
        self,
        shell: ResponseShell,
        keep: Keeper,
        replies: AsyncIterator[IndexedEvent],
        placement: Placement,
    ) -> dict[str, Any]:
        """Stores the response queued and finishes it in a task; returns the queued response. A streamed one's
        events are kept in the event log as they come, for readers (``self.events``). Raises DependencyUnavailable
        or NotStorable, the work then cancelled."""
        self._track(shell.id, self._finish(shell, keep, replies, placement))
        queued = shell.response("queued")
        try:
            await keep.save(queued, placement)  # a replace: its end may be stored first, and then this changes nothing
        except (DependencyUnavailable, NotStorable):
            if (task := self._finishing.get(shell.id)) is not None:
                task.cancel()  # with the work
            raise
        return queued

    async def finish_at_once(
        self, shell: Shell, keep: Keeper, replies: AsyncIterator[IndexedEvent], placement: Placement
    ) -> dict[str, Any]:
        """A response whose answer is at hand (the response cache's) is finished before it is returned: its end is
        stored with no queued response before it, and a streamed one's events are all kept. Queued, it could not be
        taken over (its answer is on no reply topic): an instance dying before storing its end would leave it to
        fail at its deadline. Raises DependencyUnavailable or NotStorable (its input)."""
        return await self._finish(shell, keep, replies, placement, must_store=True)

    async def take_over(self) -> int:
        """Claims the unfinished background responses whose finisher stopped, and finishes them; how many."""
        unfinished = await self._store.unfinished()
        finishers = {row.finisher for row in unfinished if row.finisher and row.finisher != self.instance_id}
        alive = await self._liveness.alive(finishers)
        orphans = [
            row
            for row in unfinished
            if (row.finisher == self.instance_id and row.id not in self._finishing)  # from before a restart
            or (row.finisher != self.instance_id and row.finisher not in alive)
        ]
        replays: dict[str, RepliesReplay] = {}  # by reply topic: each read once for all the responses it answers
        taken = 0
        try:
            for orphan in orphans:
                claimed = await self._store.claim(orphan.id, orphan.finisher, self.instance_id)
                if claimed is None:
                    continue  # another instance was first
                logger.info("background response %s taken over from %s", orphan.id, orphan.finisher or "(unknown)")
                topic, offset, finish_by = claimed.reply_topic, claimed.reply_offset, claimed.finish_by
                if topic is None or offset is None or finish_by is None:  # (unfinished() reads only those with them)
                    continue
                if topic not in replays:
                    replays[topic] = RepliesReplay(self._common, topic)
                replay = replays[topic]
                deadline_at = finish_by - timedelta(seconds=BACKGROUND_STORE_GRACE_S)
                replies = replay.expect(orphan.id, offset, deadline_at, cleared=not claimed.screened_beside)
                self._track(orphan.id, self._finish_orphan(claimed, replies))
                taken += 1
        finally:  # (also when a claim fails: those claimed before it are finished)
            for replay in replays.values():
                task = replay.start()
                self._replays.add(task)
                task.add_done_callback(self._replays.discard)
        return taken

    async def stop(self) -> None:
        """Hands over: the tasks end, the work goes on, and the responses stay queued for another instance (or
        this one, restarted) to claim once this instance's beat is gone."""
        self.handing_over = True
        tasks = [*self._finishing.values(), *self._replays]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._liveness.stop()

    def _track(self, response_id: str, work: Coroutine[Any, Any, object]) -> None:
        async def logged() -> None:
            try:
                await work
            except Exception:  # it stays queued: another pass, or another instance, claims it again
                logger.exception("background response %s could not be finished", response_id)

        task = asyncio.get_running_loop().create_task(logged(), name=f"background {response_id}")
        self._finishing[response_id] = task
        task.add_done_callback(lambda _: self._finishing.pop(response_id, None))

    async def _finish(
        self,
        shell: Shell,
        keep: Keeper,
        replies: AsyncIterator[IndexedEvent],
        placement: Placement,
        taken_over: bool = False,
        kept_until: int = -1,
        must_store: bool = False,
    ) -> dict[str, Any]:
        """Reads the answer, stores the response's end and returns it. A streamed one (``placement.streamed``) keeps
        its events in the event log as they come, those numbered after ``kept_until`` (for a response taken over:
        the last one its instance kept). With ``must_store``, an end that cannot be stored raises (_store_end)."""
        if not placement.streamed:
            try:
                response = await whole_response(shell, replies)
            except ApiError as exc:
                response = shell.response("failed", error=exc)
            return await self._store_end(keep, response, placement, taken_over, must_store)
        logging, ended = True, None
        sequence = -1  # stream_response numbers its events from 0, one by one, and ends with the response's end
        async for text in stream_response(shell, replies):
            sequence += 1
            ends = ends_stream(text)
            if ends:  # stored first: a reader that sees the end finds the response (which only this event holds)
                ended = await self._store_end(keep, read_event(text)[2]["response"], placement, taken_over, must_store)
            if logging and sequence > kept_until:
                try:
                    event = LoggedEvent(sequence, text, ends)
                    await self.events.append(shell.id, event, placement.finish_by + EVENTS_KEPT_AFTER)
                except DependencyUnavailable:  # the response is still finished; its stream ends here
                    logging = False
                    logger.warning("background response %s: its events can no longer be kept", shell.id)
        assert ended is not None, "a response's stream ends with its end"
        return ended

    async def _finish_orphan(self, claimed: StoredResponse, replies: AsyncIterator[ReplyEvent]) -> None:
        """Finishes a response taken over from its ``replies``, read again as the instance that asked read them
        (RepliesReplay), repeats dropped too: its end, and for a streamed one the events its readers have not had
        yet, are what that instance would have made. Then the tenant's limits are settled with the tokens it used,
        as that instance would have."""
        assert claimed.reply_topic is not None and claimed.reply_offset is not None and claimed.finish_by is not None
        response_id = str(claimed.response["id"])
        led_to = claimed.conversation[: len(claimed.conversation) - len(claimed.response.get("output") or [])]
        keep = Keeper(self._store, self._conversations, claimed.tenant_id or "", led_to, claimed.input_count or 0)
        logged = await self.events.last(response_id)  # None: not streamed, or none of its events kept yet
        placement = Placement(
            claimed.finish_by,
            self.instance_id,
            claimed.reply_topic,
            claimed.reply_offset,
            claimed.charge,
            claimed.streamed or logged is not None,  # (stored before the flag was: its events tell)
            claimed.screened_beside,
        )
        shell = TakenOverShell(claimed.response)
        response = await self._finish(
            shell, keep, merged([without_repeats(replies)]), placement, True, logged.sequence if logged else -1
        )
        if placement.charge is not None:
            await self._limiter.settle(placement.charge, (response.get("usage") or {}).get("total_tokens", 0))

    async def _store_end(
        self, keep: Keeper, response: dict[str, Any], placement: Placement, taken_over: bool, must_store: bool = False
    ) -> dict[str, Any]:
        """Stores the response's end; returns it as stored (a failure saying why, when its output could not be).
        With ``must_store``, raises DependencyUnavailable rather than leave it unstored, and NotStorable for an input
        that cannot be stored."""
        try:
            await keep.save(response, placement)
            self._metrics.background_ended.labels(response["status"], str(taken_over).lower()).inc()
        except DependencyUnavailable:  # readers see it failed at finish_by
            if must_store:
                raise
            logger.warning(
                "background response %s ended %s but could not be stored", response["id"], response["status"]
            )
        except NotStorable as exc:  # its output: the end is then a failure that says why
            if not response["output"]:
                raise  # not its output, then: its input
            error = {"code": "output_not_storable", "message": f"The response was generated, but {exc}."}
            failed = response | {"status": "failed", "output": [], "error": error, "completed_at": None}
            return await self._store_end(keep, failed, placement, taken_over, must_store)
        return response
