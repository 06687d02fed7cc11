"""Pure parts of the safety stage: the screening cache, the guard model's verdicts and fallback, what a decision on a
prompt and an expired held item send."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka.errors import UnknownTopicOrPartitionError

from services.safety.cache import ScreeningCache
from services.safety.guard import verdict_of
from services.safety.policy import DEFAULT_POLICY, Decision, decide, escalate
from services.safety.review import (
    deliveries,
    expiry_deliveries,
    held_messages,
    late_choice_deliveries,
    prompt_verdict,
    unscreened,
)
from services.safety.screening import Screener
from services.safety.web import deliver
from shared.contracts import (
    ChatMessage,
    CompletionFinished,
    CompletionRequested,
    GenerationFailed,
    Message,
    PromptCleared,
    RequestCancelled,
    Usage,
)
from shared.topics import Topics


class CountingClassifier:
    name = "counting"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def score(self, texts: Sequence[str]) -> list[dict[str, float]]:
        self.seen += texts
        return [{"violence": 0.9 if "attack" in t else 0.0} for t in texts]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_identical_prompts_of_one_tenant_reuse_the_model_scores_until_the_ttl() -> None:
    clock = Clock()
    classifier = CountingClassifier()
    screener = Screener([classifier], cache=ScreeningCache("v1", ttl_s=300, clock=clock))
    first = await screener.screen(["plan the attack", "hello"], ["t1", "t1"])
    again = await screener.screen(["plan the attack", "hello", "new text"], ["t1", "t1", "t1"])
    assert classifier.seen == ["plan the attack", "hello", "new text"]  # only the new text reached the model
    assert [s.scores for s in again[:2]] == [s.scores for s in first]
    assert again[0].scores["violence"] == 0.9
    assert screener.cache is not None and (screener.cache.hits, screener.cache.misses) == (2, 3)

    await screener.screen(["plan the attack"], ["t2"])  # another tenant: its own entry
    assert classifier.seen[-1] == "plan the attack" and len(classifier.seen) == 4

    clock.now = 301  # past the TTL
    await screener.screen(["hello"], ["t1"])
    assert classifier.seen[-1] == "hello" and len(classifier.seen) == 5


async def test_a_text_that_comes_several_times_in_one_call_is_scored_once() -> None:
    classifier = CountingClassifier()
    screener = Screener([classifier], cache=ScreeningCache("v1"))
    screened = await screener.screen(["plan the attack", "hello", "plan the attack"], ["t1", "t2", "t1"])
    assert classifier.seen == ["plan the attack", "hello"]
    assert [s.scores["violence"] for s in screened] == [0.9, 0.0, 0.9]
    await screener.screen(["plan the attack"], ["t1"])
    assert len(classifier.seen) == 2  # and cached for the tenant


async def test_rules_run_on_every_prompt_even_on_a_cache_hit() -> None:
    screener = Screener([CountingClassifier()], cache=ScreeningCache("v1"))
    await screener.screen(["mail x@example.com"], ["t"])
    (hit,) = await screener.screen(["mail x@example.com"], ["t"])
    assert hit.scores["pii"] == 1.0 and "[EMAIL]" in hit.snippet


def test_cache_keys_hold_no_text_and_change_with_the_version_and_the_tenant() -> None:
    cache = ScreeningCache("v1")
    key = cache.key("t", "my secret prompt")
    assert b"secret" not in key and len(key) == 32
    assert key == cache.key("t", "my secret prompt")
    assert key != cache.key("u", "my secret prompt")
    other_version = ScreeningCache("v2", _secret=cache._secret)
    assert other_version.key("t", "my secret prompt") != key
    assert ScreeningCache("v1").key("t", "my secret prompt") != key  # a new process draws a new secret


def test_cache_drops_the_oldest_entries_beyond_its_size() -> None:
    cache = ScreeningCache("v", max_entries=2)
    for i in range(3):
        cache.put(bytes([i]), {"c": {"x": float(i)}})
    assert cache.size == 2 and cache.get(bytes([0])) is None and cache.get(bytes([2])) == {"c": {"x": 2.0}}


def _finished(text: str) -> CompletionFinished:
    usage = Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
    return CompletionFinished(request_id="g", sequence=0, model="m", text=text, finish_reason="stop", usage=usage)


def test_guard_verdicts_and_the_fallback_they_need() -> None:
    assert verdict_of(_finished("safe")).outcome == "safe"
    unsafe = verdict_of(_finished("unsafe: violence"))
    assert unsafe.outcome == "unsafe" and unsafe.scores == {"violence": 1.0} and not unsafe.needs_fallback
    assert verdict_of(_finished("zq blorp")).outcome == "unreadable"
    assert (
        verdict_of(GenerationFailed(request_id="g", sequence=0, code="engine_error", message="x")).outcome == "failed"
    )
    assert verdict_of(None).outcome == "timeout"
    assert all(verdict_of(a).needs_fallback for a in (_finished("?"), None))


def test_guard_fallback_raises_the_decision_but_never_lowers_it() -> None:
    allow = decide({}, DEFAULT_POLICY.prompt)
    released = escalate(allow, "release", "guard_unverified")
    assert released == Decision("release", ("guard_unverified",), ("guard_unverified",))
    assert escalate(allow, "allow", "guard_unverified") == allow
    block = decide({"secrets": 1.0}, DEFAULT_POLICY.prompt)
    kept = escalate(block, "hold", "guard_unverified")
    assert kept.action == "block" and kept.categories == ("secrets",) and "guard_unverified" in kept.flagged


def _request() -> CompletionRequested:
    return CompletionRequested(
        request_id="r1", model="m", messages=[ChatMessage(role="user", content="hi")], reply_topic="replies"
    )


def test_an_expired_held_prompt_is_refused_with_the_reason_or_released_per_policy() -> None:
    (withheld,) = expiry_deliveries("prompt", ((_request(),), None, None), "r1", "withhold", ["pii"])
    assert withheld.reply and isinstance(withheld.message, GenerationFailed)
    assert withheld.message.code == "content_blocked"
    assert "review deadline" in withheld.message.message and "pii" in withheld.message.message
    held = _request()
    (released,) = expiry_deliveries("prompt", ((held,), None, None), "r1", "release", ["pii"])
    assert not released.reply and released.message == held  # forwarded to generation
    assert expiry_deliveries("prompt", ((), None, None), "r1", "withhold", ["pii"]) == []


async def test_output_windows_use_rules_and_the_completed_output_the_final_screener() -> None:
    from services.safety.screening import OutputScreen

    final = CountingClassifier()
    screen = OutputScreen(
        Screener(), DEFAULT_POLICY.output, window_chars=50, every_chars=10, final_screener=Screener([final])
    )
    for _ in range(5):
        assert await screen.feed("a calm story ") is None
    assert final.seen == []  # windows: rules only
    await screen.feed("then the attack began")
    verdict = await screen.finish()
    assert final.seen == [screen.text]  # the whole output, once
    assert verdict is not None and verdict[0].action == "block"  # violence 0.9 >= 0.7


def test_a_prompt_screened_beside_generation_is_cleared_not_forwarded_and_a_block_cancels_its_generation() -> None:
    topics = Topics("t.")
    before, beside = _request(), _request().model_copy(update={"prompt_screening": "beside"})
    assert prompt_verdict(before, "allow", (), topics) == [(before, "t.screened.m")]
    assert prompt_verdict(beside, "release", ("pii",), topics) == [
        (PromptCleared(request_id="r1", by="screening"), "replies")
    ]
    (refused,) = prompt_verdict(before, "block", ("secrets",), topics)
    assert refused[1] == "replies" and isinstance(refused[0], GenerationFailed)
    refused_beside, (cancel, topic) = prompt_verdict(beside, "block", ("secrets",), topics)
    assert refused_beside == refused
    assert topic == "t.cancellations" and isinstance(cancel, RequestCancelled) and cancel.request_id == "r1"
    assert prompt_verdict(beside, "hold", ("pii",), topics) == []  # the reviewer decides later


def test_a_held_prompt_screened_beside_generation_is_cleared_to_its_requester_on_release() -> None:
    held = _request().model_copy(update={"prompt_screening": "beside"})
    (approved,) = deliveries("prompt", ((held,), None, None), "r1", "approve", [], ["pii"])
    assert approved.reply and approved.message == PromptCleared(request_id="r1", by="review")
    (expired,) = expiry_deliveries("prompt", ((held,), None, None), "r1", "release", ["pii"])
    assert expired.reply and expired.message == approved.message
    (rejected,) = deliveries("prompt", ((held,), None, None), "r1", "reject", ["pii"], ["pii"])
    assert rejected.reply and isinstance(rejected.message, GenerationFailed)
    assert rejected.message.code == "content_blocked"


def test_a_decision_on_a_prompt_held_for_several_choices_applies_to_each_keyed_by_its_own_id() -> None:
    choices = tuple(_request().model_copy(update={"request_id": f"r1-{i}", "choice_of": "r1"}) for i in range(3))
    approved = deliveries("prompt", (choices, None, None), "r1-0", "approve", [], ["pii"])
    assert [(d.message, d.reply, d.key) for d in approved] == [(c, False, c.request_id) for c in choices]
    rejected = deliveries("prompt", (choices, None, None), "r1-0", "reject", ["pii"], ["pii"])
    assert [d.key for d in rejected] == ["r1-0", "r1-1", "r1-2"] and all(d.reply for d in rejected)
    assert [d.message.request_id for d in rejected] == ["r1-0", "r1-1", "r1-2"]  # type: ignore[attr-defined]
    withheld = expiry_deliveries("prompt", (choices, None, None), "r1-0", "withhold", ["pii"])
    assert [(d.key, d.message.code) for d in withheld] == [(c.request_id, "content_blocked") for c in choices]  # type: ignore[attr-defined]


def test_a_held_choice_joining_a_settled_item_gets_its_decision_or_its_expiry() -> None:
    late = _request().model_copy(update={"request_id": "r1-2", "choice_of": "r1"})
    decided = {"status": "decided", "decision": "approve", "labels": [], "categories": ["pii"]}
    ((forwarded, reply, key),) = [(d.message, d.reply, d.key) for d in late_choice_deliveries(decided, late, "x")]
    assert (forwarded, reply, key) == (late, False, "r1-2")
    rejected = decided | {"decision": "reject", "labels": ["pii"]}
    (refused,) = late_choice_deliveries(rejected, late, "release")
    assert refused.reply and refused.message.code == "content_blocked"  # type: ignore[attr-defined]
    expired = {"status": "expired", "decision": None, "labels": None, "categories": ["pii"]}
    (withheld,) = late_choice_deliveries(expired, late, "withhold")
    assert withheld.key == "r1-2" and "review deadline" in withheld.message.message  # type: ignore[attr-defined]
    (released,) = late_choice_deliveries(expired, late, "release")
    assert released.message == late and not released.reply


def test_an_item_stored_before_items_held_several_requests_is_read_as_one() -> None:
    held = _request()
    stored = {"request": held.model_dump(mode="json")}
    assert held_messages(stored) == ((held,), None, None)
    assert held_messages({"requests": [held.model_dump(mode="json")]}) == ((held,), None, None)
    assert held_messages(None) == ((), None, None)


def test_a_prompt_whose_policy_cannot_be_read_is_refused_as_retryable_and_its_generation_beside_cancelled() -> None:
    topics = Topics("t.")
    before, beside = _request(), _request().model_copy(update={"prompt_screening": "beside"})
    ((failure, topic),) = unscreened(before, topics)
    assert topic == "replies" and isinstance(failure, GenerationFailed)
    assert failure.code == "screening_unavailable" and failure.retryable and failure.request_id == "r1"
    refused, (cancel, cancel_topic) = unscreened(beside, topics)
    assert refused == (failure, "replies")
    assert cancel_topic == "t.cancellations" and isinstance(cancel, RequestCancelled) and cancel.request_id == "r1"


async def test_a_decision_whose_reply_topic_takes_nothing_still_releases_what_it_releases() -> None:
    """Two choices held with one prompt, one screened beside generation (its requester is told on its reply topic),
    one before (forwarded to generation): the reply topic is gone, and the forward still goes out."""
    beside = _request().model_copy(update={"request_id": "r1-0", "prompt_screening": "beside"})
    before = _request().model_copy(update={"request_id": "r1-1"})
    sends = deliveries("prompt", ((beside, before), None, None), "r1", "approve", [], ["violence"])
    assert {d.reply for d in sends} == {True, False}
    sent: list[tuple[str, str]] = []

    async def send(message: Message, topic: str, key: str) -> None:
        if topic == "gone":
            raise UnknownTopicOrPartitionError()
        sent.append((topic, key))

    await deliver(send, sends, "gone", "screened.m")
    assert sent == [("screened.m", "r1-1")]
