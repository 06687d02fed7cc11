"""Combining classifiers into one verdict per text, and screening a streamed output over a sliding window. Pure: the
classifiers are handed in (see classifiers.py for the real ones), so tests can pass fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.safety import rules
from services.safety.cache import ScreeningCache
from services.safety.policy import CategoryRule, Decision, decide
from shared.contracts import CompletionRequested, FunctionTool

SNIPPET_CHARS = 300


class Classifier(Protocol):
    """Scores texts: for each text, a score in [0, 1] per category it knows."""

    name: str

    def score(self, texts: Sequence[str]) -> list[dict[str, float]]: ...


class AsyncClassifier(Protocol):
    name: str

    async def score(self, texts: Sequence[str]) -> list[dict[str, float]]: ...


@dataclass(frozen=True)
class Screening:
    """What screening found in one text."""

    scores: dict[str, float]
    """Combined score per category: the highest any classifier gave."""
    by_classifier: dict[str, dict[str, float]]
    snippet: str
    """The start of the text with PII and secrets masked: what a reviewer sees when no text is retained."""
    redacted: str
    """The whole text with PII and secrets masked."""


def combine(per_classifier: dict[str, dict[str, float]]) -> dict[str, float]:
    return max_per_category(list(per_classifier.values()))


def max_per_category(scores: Sequence[dict[str, float]]) -> dict[str, float]:
    """The highest score each category got in ``scores``."""
    out: dict[str, float] = {}
    for s in scores:
        for category, score in s.items():
            out[category] = max(out.get(category, 0.0), score)
    return out


def merge(parts: Sequence[Screening]) -> Screening:
    """The screening of a text made of ``parts`` screened one by one: per classifier, the highest score any part got
    in each category; the masked parts joined by new lines."""
    names = dict.fromkeys(name for part in parts for name in part.by_classifier)
    by_classifier = {name: max_per_category([p.by_classifier.get(name, {}) for p in parts]) for name in names}
    redacted = "\n".join(p.redacted for p in parts)
    return Screening(combine(by_classifier), by_classifier, snippet_of(redacted), redacted)


def snippet_of(redacted: str) -> str:
    return redacted if len(redacted) <= SNIPPET_CHARS else redacted[:SNIPPET_CHARS] + "…"


def windows(spans: Sequence[tuple[int, int]], size: int, overlap: int) -> list[tuple[int, int]]:
    """Character ranges covering a text's ``spans`` (its tokens or words, in order) ``size`` spans at a time, each
    window starting ``size - overlap`` spans after the previous one, so that a passage cut by one window's edge lies
    whole in the next. One range for a text of at most ``size`` spans (the whole text, even when empty)."""
    if not 0 <= overlap < size:
        raise ValueError("overlap must be at least 0 and below size")
    if len(spans) <= size:
        return [(0, spans[-1][1])] if spans else [(0, 0)]
    out = []
    for start in range(0, len(spans) - overlap, size - overlap):
        chunk = spans[start : start + size]
        out.append((chunk[0][0], chunk[-1][1]))
    return out


@dataclass
class Screener:
    """Rules plus any number of model classifiers, with an optional cache of the model classifiers' scores."""

    classifiers: Sequence[Classifier] = ()
    async_classifiers: Sequence[AsyncClassifier] = ()
    deny_terms: tuple[str, ...] = ()
    cache: ScreeningCache | None = None
    _waiting: list[tuple[list[str], asyncio.Future[list[dict[str, dict[str, float]]]]]] = field(
        default_factory=list, init=False, repr=False
    )
    _scorer: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    async def screen(self, texts: Sequence[str], tenants: Sequence[str | None] | None = None) -> list[Screening]:
        """``tenants`` (one per text) scopes cached scores per tenant; without it nothing is cached."""
        findings = [rules.find(t, self.deny_terms) for t in texts]
        per_text: list[dict[str, dict[str, float]]] = [{"rules": rules.scores(f)} for f in findings]
        if self.classifiers:
            cache = self.cache if tenants is not None else None
            keys: list[bytes] = []
            cached: list[dict[str, dict[str, float]] | None] = [None] * len(texts)
            if cache is not None and tenants is not None:
                keys = [cache.key(tenant, t) for tenant, t in zip(tenants, texts, strict=True)]
                cached = [cache.get(k) for k in keys]
            todo = [i for i, c in enumerate(cached) if c is None]
            if todo:
                # a text is scored once however often it comes in one call (the choices of a request for several,
                # a burst of chats behind one system prompt); scores depend on the text only
                unique = list(dict.fromkeys(texts[i] for i in todo))
                scored = dict(zip(unique, await self._score_together(unique), strict=True))
                for i in todo:
                    cached[i] = scored[texts[i]]
                    if cache is not None:
                        cache.put(keys[i], scored[texts[i]])
            for i, by in enumerate(cached):
                per_text[i] |= by or {}
        for aclassifier in self.async_classifiers:
            for i, s in enumerate(await aclassifier.score(texts)):
                per_text[i][aclassifier.name] = s
        out = []
        for text, found, by in zip(texts, findings, per_text, strict=True):
            redacted = rules.redact(text, found)
            out.append(Screening(combine(by), by, snippet_of(redacted), redacted))
        return out

    async def screen_parts(
        self, parts: Sequence[Sequence[str]], tenants: Sequence[str | None] | None = None
    ) -> list[Screening]:
        """One Screening per item (a request) made of parts (its turns), each part screened on its own: one turn is
        then neither cut off behind a long system prompt nor diluted by the others (measured: a harmful or injected
        turn after a 232-token system prompt scored like a benign one), and parts seen before (a tenant's system
        prompt, the history a chat sends again each turn) come from the cache."""
        flat = [part for item in parts for part in (item or [""])]
        flat_tenants = None
        if tenants is not None:
            flat_tenants = [t for item, t in zip(parts, tenants, strict=True) for _ in (item or [""])]
        screened = await self.screen(flat, flat_tenants)
        out, start = [], 0
        for item in parts:
            count = len(item) or 1
            out.append(merge(screened[start : start + count]))
            start += count
        return out

    async def _score_together(self, texts: list[str]) -> list[dict[str, dict[str, float]]]:
        """The model classifiers' scores of ``texts``. Texts of calls made while a scoring runs are scored together
        once it ends: a worker screens each completed output, and a model scores a batch of 16 texts for 2-4 times
        less CPU per text than one at a time. A call made while none runs starts at once."""
        future: asyncio.Future[list[dict[str, dict[str, float]]]] = asyncio.get_running_loop().create_future()
        self._waiting.append((texts, future))
        if self._scorer is None or self._scorer.done():
            self._scorer = asyncio.create_task(self._score_waiting(), name="screener-scoring")
        return await future

    async def _score_waiting(self) -> None:
        while self._waiting:
            calls, self._waiting = self._waiting, []
            try:
                # off the event loop: a worker's engine shares the loop, and models release the GIL while they compute
                scored = await asyncio.to_thread(self._score, [t for texts, _ in calls for t in texts])
            except Exception as exc:
                for _, future in calls:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for texts, future in calls:
                if not future.done():  # its caller may have been cancelled
                    future.set_result(scored[start : start + len(texts)])
                start += len(texts)

    def _score(self, texts: list[str]) -> list[dict[str, dict[str, float]]]:
        out: list[dict[str, dict[str, float]]] = [{} for _ in texts]
        for classifier in self.classifiers:
            for i, s in enumerate(classifier.score(texts)):
                out[i][classifier.name] = s
        return out


def prompt_parts(request: CompletionRequested) -> list[str]:
    """The texts screened for a request, each on its own: every user, system and tool turn (assistant turns were
    screened as outputs; a tool's output is untrusted text), an assistant turn the model is to continue (the client
    wrote that prefill, and it steers the answer), every value of the documents given to the template (retrieved
    text, untrusted as a tool's output), the descriptions of the tools shown to the model (the client writes them, and
    the model reads them as instructions), or the completion prompt."""
    if request.prompt is not None:
        return [request.prompt]
    last = len(request.messages) - 1
    turns = [
        m.content
        for i, m in enumerate(request.messages)
        if m.role != "assistant" or (i == last and request.continue_final_message)
    ]
    documents = [value for document in request.documents or [] for value in document.values()]  # untrusted text
    return turns + documents + (_descriptions(request.tools) if request.tool_choice != "none" else [])


def _descriptions(tools: Sequence[FunctionTool]) -> list[str]:
    """Every description in the tools' signatures: the functions' and those anywhere in their parameters' schemas."""
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("description"), str):
                found.append(node["description"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for tool in tools:
        if tool.description:
            found.append(tool.description)
        walk(tool.parameters)
    return found


def prompt_text(request: CompletionRequested) -> str:
    """A request's screened texts as one (what a reviewer or the guard model reads)."""
    return "\n".join(prompt_parts(request))


@dataclass
class OutputScreen:
    """Screens one streamed output: every ``every_chars`` new characters, the last ``window_chars`` are screened, so
    a harmful passage is caught while it streams at a bounded cost per check; the whole text is screened at the end.

    ``feed`` returns a Decision once the text must not continue (block, or hold: the rest is kept back for review),
    else None. Release-then-review decisions do not stop the stream; they are remembered in ``flagged``."""

    screener: Screener
    rules: dict[str, CategoryRule]
    window_chars: int = 400
    every_chars: int = 120
    final_screener: Screener | None = None
    """Screens the whole output at the end instead of ``screener`` (e.g. with the embedding model added)."""
    text: str = ""
    checked_at: int = 0
    flagged: list[tuple[Decision, Screening]] = field(default_factory=list)

    async def feed(self, delta: str) -> tuple[Decision, Screening] | None:
        self.text += delta
        if len(self.text) - self.checked_at < self.every_chars:
            return None
        self.checked_at = len(self.text)
        return await self._check(self.text[-self.window_chars :])

    async def finish(self) -> tuple[Decision, Screening] | None:
        """Screens the whole output once generation ended."""
        return await self._check(self.text, self.final_screener or self.screener)

    async def _check(self, text: str, screener: Screener | None = None) -> tuple[Decision, Screening] | None:
        (screening,) = await (screener or self.screener).screen([text])
        decision = decide(screening.scores, self.rules)
        if decision.action in ("block", "hold"):
            return decision, screening
        if decision.action == "release":
            self.flagged.append((decision, screening))
        return None
