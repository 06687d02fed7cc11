"""Output screening for the worker, in-process: each request's text is screened over a sliding window while it streams
and in full when it completes (see screening.OutputScreen). What the worker gets back:

- block, while streaming or at the end: ``ContentBlocked`` is raised; the worker stops generating and ends the
  request with ``failure(sequence)``, a GenerationFailed with code ``content_blocked`` naming the category (the
  ingress turns it into a 400 ``content_policy_violation``, or an error event on a stream already under way).
- hold: the rest of the stream is kept back (``pass_delta`` returns None) and the final event is not sent; the held
  delta (the worker's reading of what was kept back) and the final event go to the review queue, and the reviewer's
  decision delivers them or sends content_blocked.
- release-then-review: nothing changes for the client; the output is flagged for review.

Flagged outputs are published as ContentFlagged (stage ``output``) through the ``flag`` callable handed in. Pure: no
client imports; the worker wires the policy lookup and the publisher (see ``build_output_guard`` in wiring.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple

from services.safety.policy import Decision, Policy
from services.safety.review import blocked_failure
from services.safety.screening import OutputScreen, Screener, Screening
from shared.contracts import (
    CompletionFinished,
    CompletionRequested,
    ContentFlagged,
    GenerationFailed,
    TokenLogprob,
    TokensGenerated,
)


class OutputDelta(NamedTuple):
    """Output generated since the last delta sent: its text, how many tokens it holds and those tokens' logprobs and
    ids (kept whether or not the request asked for them; its replies carry them only when it did)."""

    text: str
    tokens: int
    logprobs: tuple[TokenLogprob, ...] = ()
    token_ids: tuple[int, ...] = ()

    def then(self, later: OutputDelta) -> OutputDelta:
        """This delta followed by ``later``, as one."""
        return OutputDelta(
            self.text + later.text,
            self.tokens + later.tokens,
            self.logprobs + later.logprobs,
            self.token_ids + later.token_ids,
        )


class ContentBlocked(Exception):
    """The output must stop here."""

    def __init__(self, request_id: str, categories: tuple[str, ...]) -> None:
        super().__init__(f"output blocked: {', '.join(categories)}")
        self.request_id, self.categories = request_id, categories

    def failure(self, sequence: int) -> GenerationFailed:
        return blocked_failure(self.request_id, sequence, "output", self.categories)


@dataclass
class RequestOutputScreen:
    request: CompletionRequested
    screen: OutputScreen
    flag: Callable[[ContentFlagged], Awaitable[None]]
    sent: str = ""
    withheld: str = ""
    held: tuple[Decision, Screening] | None = None
    flagged_release: bool = False

    async def pass_delta(self, delta: OutputDelta | None) -> OutputDelta | None:
        """The delta to send on, or None while the output is held. Raises ContentBlocked."""
        if delta is None:
            return None
        verdict = await self.screen.feed(delta.text)
        if verdict is not None:
            self._stop_or_hold(verdict)
        if self.held is not None:
            self.withheld += delta.text
            return None
        self.sent += delta.text
        return delta

    async def finish(
        self, final: CompletionFinished, held_delta: TokensGenerated | None = None
    ) -> CompletionFinished | None:
        """The final event to send, or None when it is held for review. Raises ContentBlocked. The output screened
        is all the model wrote, where the client may get it otherwise: a tool call's text as the call, a think block
        as reasoning. ``held_delta``: what a streaming client would have had of the output held back, as the worker's
        readers made it (numbered before ``final``); it goes out before the final if a reviewer releases them."""
        if self.held is None:
            verdict = await self.screen.finish()
            if verdict is not None:
                self._stop_or_hold(verdict)
        if self.held is not None:
            decision, screening = self.held
            await self.flag(self._flagged("hold", decision, screening, final, held_delta))
            return None
        if self.screen.flagged and not self.flagged_release:
            decision, screening = self.screen.flagged[-1]
            self.flagged_release = True
            await self.flag(self._flagged("release", decision, screening, None, None))
        return final

    def _stop_or_hold(self, verdict: tuple[Decision, Screening]) -> None:
        decision, _ = verdict
        if decision.action == "block":
            raise ContentBlocked(self.request.request_id, decision.categories)
        if self.held is None:
            self.held = verdict

    def _flagged(
        self,
        action: str,
        decision: Decision,
        screening: Screening,
        completion: CompletionFinished | None,
        held_delta: TokensGenerated | None,
    ) -> ContentFlagged:
        return ContentFlagged(
            request_id=self.request.request_id,
            tenant_id=self.request.tenant_id,
            model=self.request.model,
            stage="output",
            action=action,  # type: ignore[arg-type]
            categories=list(decision.flagged),
            scores={k: round(v, 4) for k, v in screening.scores.items()},
            snippet=screening.snippet,
            text=self.sent + self.withheld if self.request.retain_text else None,  # all the model wrote
            reply_topic=self.request.reply_topic,
            held_completion=completion,
            held_delta=held_delta,
            retention_days=self.request.retention_days,
        )


@dataclass
class OutputGuard:
    """Made once per worker; ``start`` gives each request its own screen."""

    screener: Screener
    policy_for: Callable[[str | None, str | None], Awaitable[Policy]]
    """The tenant's policy, given the tenant and the digest its producer read (PolicyStore.get)."""
    flag: Callable[[ContentFlagged], Awaitable[None]]
    window_chars: int = 400
    every_chars: int = 120
    final_screener: Screener | None = None
    """Screens each completed output instead of ``screener`` (the embedding model runs here by default)."""

    async def start(self, request: CompletionRequested) -> RequestOutputScreen:
        policy = await self.policy_for(request.tenant_id, request.screening_policy)
        screen = OutputScreen(
            self.screener, policy.output, self.window_chars, self.every_chars, final_screener=self.final_screener
        )
        return RequestOutputScreen(request, screen, self.flag)
