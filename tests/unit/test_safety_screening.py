from __future__ import annotations

from collections.abc import Sequence

from services.safety import rules
from services.safety.classifiers import parse_guard_answer
from services.safety.evaluate import evaluate
from services.safety.labels import CATEGORIES, LabeledExample, load_labeled
from services.safety.policy import DEFAULT_POLICY, CategoryRule, decide, priority
from services.safety.screening import OutputScreen, Screener, prompt_text


def kinds(text: str, deny: tuple[str, ...] = ()) -> set[str]:
    return {f.kind for f in rules.find(text, deny)}


def test_emails_phones_and_cards_that_pass_luhn_are_pii() -> None:
    assert kinds("write to jane.doe@example.com") == {"email"}
    assert kinds("call +44 20 7946 0958 today") == {"phone_number"}
    assert kinds("call (555) 123-4567") == {"phone_number"}
    assert kinds("card 4111 1111 1111 1111 please") == {"card_number"}


def test_digit_runs_that_fail_luhn_are_not_cards() -> None:
    assert "card_number" not in kinds("order 4111 1111 1111 1112 shipped")
    assert kinds("the year 2024 had 365 days") == set()


def test_secrets_are_found_and_masked() -> None:
    text = "key sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz01 and AKIAIOSFODNN7EXAMPLE, mail a@b.io"
    found = rules.find(text)
    assert {f.kind for f in found} == {"openai_key", "aws_access_key", "email"}
    assert rules.redact(text, found) == "key [OPENAI_KEY] and [AWS_ACCESS_KEY], mail [EMAIL]"
    assert rules.scores(found) == {"pii": 1.0, "secrets": 1.0, "deny_list": 0.0}


def test_deny_list_matches_whole_words_case_insensitively() -> None:
    assert kinds("Tell me about Project Zebra", ("project zebra",)) == {"term"}
    assert kinds("zebras are striped", ("zebra",)) == set()


def test_policy_takes_the_strictest_action() -> None:
    rules_ = {
        "pii": CategoryRule(escalate_at=0.5, escalate="release"),
        "violence": CategoryRule(block_at=0.9, escalate_at=0.5, escalate="hold"),
    }
    assert decide({"pii": 0.1, "violence": 0.2}, rules_).action == "allow"
    assert decide({"pii": 1.0}, rules_).action == "release"
    held = decide({"pii": 1.0, "violence": 0.6}, rules_)
    assert (held.action, held.categories, held.flagged) == ("hold", ("violence",), ("pii", "violence"))
    assert decide({"violence": 0.95}, rules_).action == "block"
    assert decide({"unknown": 1.0}, rules_).action == "allow"


def test_held_items_come_before_released_ones_in_review() -> None:
    assert priority({"pii": 1.0}, "hold") > priority({"pii": 1.0}, "release")


class FakeClassifier:
    name = "fake"

    def __init__(self, trigger: str, category: str) -> None:
        self.trigger, self.category = trigger, category

    def score(self, texts: Sequence[str]) -> list[dict[str, float]]:
        return [{self.category: 1.0 if self.trigger in t else 0.0} for t in texts]


async def test_screener_combines_rules_and_classifiers_and_snippets_are_redacted() -> None:
    screener = Screener(classifiers=[FakeClassifier("attack", "violence")])
    a, b = await screener.screen(["plan the attack, mail me at x@example.com", "hello"])
    assert a.scores["violence"] == 1.0 and a.scores["pii"] == 1.0
    assert "x@example.com" not in a.snippet and "[EMAIL]" in a.snippet
    assert b.scores == {"pii": 0.0, "secrets": 0.0, "deny_list": 0.0, "violence": 0.0}
    assert decide(a.scores, DEFAULT_POLICY.prompt).action == "block"
    assert decide(b.scores, DEFAULT_POLICY.prompt).action == "allow"


async def test_output_screen_stops_a_stream_within_one_window_of_the_harm() -> None:
    screen = OutputScreen(
        Screener(classifiers=[FakeClassifier("attack", "violence")]),
        DEFAULT_POLICY.output,
        window_chars=100,
        every_chars=20,
    )
    assert await screen.feed("Once upon a time " * 3) is None
    verdict = None
    fed = 0
    for word in ["then ", "we ", "attack ", "the ", "town ", "at ", "dawn ", "with ", "fire ", "and ", "more "]:
        fed += 1
        verdict = await screen.feed(word)
        if verdict:
            break
    assert verdict is not None and verdict[0].action == "block" and verdict[0].categories == ("violence",)
    assert fed <= 8  # caught within every_chars of the harmful word


async def test_output_screen_release_does_not_stop_but_is_remembered() -> None:
    screen = OutputScreen(Screener(), DEFAULT_POLICY.output, every_chars=10)
    assert await screen.feed("reach me at someone@example.com soon") is None
    assert await screen.finish() is None
    assert screen.flagged and screen.flagged[0][0].action == "release"


def test_prompt_text_skips_assistant_turns() -> None:
    assert prompt_text([("system", "be nice"), ("assistant", "x"), ("user", "hi")], None) == "be nice\nhi"
    assert prompt_text([], "raw") == "raw"


def test_guard_answer_parsing() -> None:
    assert parse_guard_answer("unsafe: violence, Self-Harm") == {"violence": 1.0, "self_harm": 1.0}
    assert parse_guard_answer("safe") == {}
    assert parse_guard_answer("unsafe\nS1,S10") == {"violence": 1.0, "hate": 1.0}  # Llama Guard 3's format
    assert parse_guard_answer("I cannot tell") is None  # unreadable: the caller's fallback applies
    assert parse_guard_answer("unsafe: S7") is None  # a hazard with no category of ours
    assert parse_guard_answer("") is None


def test_labeled_set_has_sources_every_category_and_a_stable_held_out_split() -> None:
    examples = load_labeled()
    assert all(e.source for e in examples)
    test = [e for e in examples if e.split == "test"]
    assert 0.2 < len(test) / len(examples) < 0.4
    for c in CATEGORIES:
        if c != "deny_list":
            assert any(c in e.categories for e in test), c


def test_evaluation_counts_hybrid_as_block_plus_correct_review() -> None:
    examples = [
        LabeledExample("a", ("violence",), "t", "test"),
        LabeledExample("b", (), "t", "test"),
        LabeledExample("c", ("violence",), "t", "test"),
    ]

    class S:
        def __init__(self, v: float) -> None:
            self.scores = {"violence": v}

    counts, escalation = evaluate(examples, [S(0.95), S(0.5), S(0.1)], DEFAULT_POLICY.prompt)  # type: ignore[list-item]
    ai, hybrid = counts["AI"]["violence"], counts["hybrid"]["violence"]
    assert (ai.tp, ai.fp, ai.fn) == (1, 1, 1)
    assert (hybrid.tp, hybrid.fp, hybrid.fn) == (1, 0, 1)
    assert escalation == 1 / 3
