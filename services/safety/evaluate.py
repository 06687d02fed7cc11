"""Evaluation command: precision and recall per category on the held-out split of the labeled set, with the default
policy, compared with the design's anchors. ``python -m services.safety.evaluate [--out report.md]``.

- "AI" counts a category as predicted when its combined score reaches the policy's escalation or block threshold
  (what the classifiers flag by themselves).
- "hybrid" keeps the auto-blocked items as predicted and sends the escalated ones to a reviewer assumed right (an
  upper bound: real reviewers make mistakes); items the policy allows stay unflagged.
- Escalation rate: share of held-out texts the policy escalates (hold or release) rather than allowing or blocking.
- The held-out texts are also screened as the last turn of a chat behind a 180-word system prompt: turn by turn, as
  the stage screens a chat request, and as one text (how the stage screened one before 4 December 2026).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from services.safety.labels import CATEGORIES, LabeledExample, load_labeled
from services.safety.policy import DEFAULT_POLICY, CategoryRule, decide
from services.safety.screening import Screener, Screening

ANCHORS = {"AI": (0.95, 0.90), "hybrid": (0.98, 0.95)}

SYSTEM_PROMPT = (
    "You are a friendly support agent for Acme Software. Our products include the Acme Editor, Acme Cloud Sync and "
    "Acme Team Chat. Always greet the customer politely, keep answers short, use numbered steps for instructions, "
    "never promise refunds, escalate billing disputes to a human, and link to the knowledge base when relevant. "
    "Business hours are nine to five Monday to Friday, Central European Time. If you do not know an answer, say so "
    "and offer to open a ticket. Do not discuss competitors. Use British spelling. Keep a warm, professional tone. "
) * 2
"""An ordinary system prompt of about 230 word pieces, in front of each held-out text in the chat comparison."""


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, predicted: bool, actual: bool) -> None:
        self.tp += predicted and actual
        self.fp += predicted and not actual
        self.fn += actual and not predicted

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None


def _flag_threshold(rule: CategoryRule) -> float | None:
    levels = [x for x in (rule.block_at, rule.escalate_at) if x is not None]
    return min(levels) if levels else None


def evaluate(
    examples: Sequence[LabeledExample], screenings: Sequence[Screening], rules: dict[str, CategoryRule]
) -> tuple[dict[str, dict[str, Counts]], float]:
    """Counts per mode (AI, hybrid) and category, and the escalation rate."""
    counts = {mode: {c: Counts() for c in CATEGORIES} for mode in ANCHORS}
    escalated = 0
    for example, screening in zip(examples, screenings, strict=True):
        decision = decide(screening.scores, rules)
        escalated += decision.action in ("hold", "release")
        for c in CATEGORIES:
            actual = c in example.categories
            rule = rules.get(c)
            threshold = _flag_threshold(rule) if rule else None
            ai = threshold is not None and screening.scores.get(c, 0.0) >= threshold
            counts["AI"][c].add(ai, actual)
            if decision.action == "block":
                hybrid = c in decision.flagged
            elif decision.action in ("hold", "release"):
                hybrid = actual  # the reviewer decides correctly
            else:
                hybrid = False
            counts["hybrid"][c].add(hybrid, actual)
    return counts, escalated / max(1, len(examples))


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def micro(counts: dict[str, Counts]) -> Counts:
    total = Counts()
    for k in counts.values():
        total.tp, total.fp, total.fn = total.tp + k.tp, total.fp + k.fp, total.fn + k.fn
    return total


def chat_report(rows: Sequence[tuple[str, dict[str, dict[str, Counts]], float]]) -> str:
    """The micro-averaged figures of each way of screening the held-out set, side by side."""
    lines = [
        "## The same texts as the last turn of a chat",
        "",
        "Each held-out text follows a system prompt of about 230 word pieces (`evaluate.SYSTEM_PROMPT`).",
        "",
        "| screened | AI precision | AI recall | hybrid precision | hybrid recall | escalation rate |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, counts, escalation in rows:
        ai, hy = micro(counts["AI"]), micro(counts["hybrid"])
        lines.append(
            f"| {label} | {_pct(ai.precision)} | {_pct(ai.recall)} | {_pct(hy.precision)} | {_pct(hy.recall)} "
            f"| {escalation:.1%} |"
        )
    return "\n".join(lines) + "\n"


def report(
    counts: dict[str, dict[str, Counts]], escalation: float, n_test: int, n_train: int, embedding: str = "int8"
) -> str:
    lines = [
        "# Safety screening: evaluation on the held-out split",
        "",
        f"Held-out examples: {n_test} (train: {n_train}); default policy, prompt rules; classifiers: rules, guardify,"
        f" MiniLM embeddings ({embedding}) + logistic regression.",
        "",
        "| category | AI precision | AI recall | hybrid precision | hybrid recall | positives |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    totals = {mode: micro(counts[mode]) for mode in ANCHORS}
    for c in CATEGORIES:
        ai, hy = counts["AI"][c], counts["hybrid"][c]
        lines.append(
            f"| {c} | {_pct(ai.precision)} | {_pct(ai.recall)} | {_pct(hy.precision)} | {_pct(hy.recall)} "
            f"| {ai.tp + ai.fn} |"
        )
    ai, hy = totals["AI"], totals["hybrid"]
    lines.append(
        f"| **all (micro)** | {_pct(ai.precision)} | {_pct(ai.recall)} | {_pct(hy.precision)} | {_pct(hy.recall)} "
        f"| {ai.tp + ai.fn} |"
    )
    lines += [
        "",
        f"Escalation rate: {escalation:.1%} of held-out texts (design: 5-10%). Not comparable with the design's figure:"
        " most of this set is harmful or carries PII on purpose, while real traffic is mostly benign.",
        "",
        "Anchors from the design: AI 95% precision / 90% recall; hybrid 98% / 95%.",
    ]
    for mode, (p, r) in ANCHORS.items():
        k = totals[mode]
        ok = (k.precision or 0) >= p and (k.recall or 0) >= r
        lines.append(
            f"- {mode}: {_pct(k.precision)} / {_pct(k.recall)} -> {'meets' if ok else 'falls short of'} the anchor"
        )
    lines += [
        "",
        "Hybrid assumes every escalated item is decided right by a reviewer: an upper bound, not a measurement of "
        "people. The labeled set is small and written by the ferry team (see services/safety/data/build_labeled.py),"
        " so these figures say little about real traffic.",
    ]
    return "\n".join(lines) + "\n"


async def run(out: Path | None, int8: bool = True, runtime: Literal["onnx", "torch"] = "onnx") -> str:
    from services.safety.classifiers import EmbeddingClassifier, InjectionClassifier, load_embedder

    examples = load_labeled()
    test = [e for e in examples if e.split == "test"]
    embedding = EmbeddingClassifier(load_embedder(1, int8, runtime), [e for e in examples if e.split == "train"])
    screener = Screener(classifiers=[InjectionClassifier(), embedding])
    screenings = await screener.screen([e.text for e in test])
    counts, escalation = evaluate(test, screenings, DEFAULT_POLICY.prompt)
    text = report(
        counts, escalation, len(test), len(examples) - len(test), f"{'int8' if int8 else 'float32'}, {runtime}"
    )
    by_turn = await screener.screen_parts([[SYSTEM_PROMPT, e.text] for e in test])
    as_one = await screener.screen([f"{SYSTEM_PROMPT}\n{e.text}" for e in test])
    text += "\n" + chat_report(
        [
            ("alone (above)", counts, escalation),
            ("turn by turn, after the system prompt", *evaluate(test, by_turn, DEFAULT_POLICY.prompt)),
            ("as one text with the system prompt", *evaluate(test, as_one, DEFAULT_POLICY.prompt)),
        ]
    )
    if out:
        out.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument(
        "--fp32", action="store_true", help="evaluate the embedding model in float32 (the service default is int8)"
    )
    parser.add_argument(
        "--runtime",
        choices=["onnx", "torch"],
        default="onnx",
        help="what runs the embedding model (service default onnx)",
    )
    args = parser.parse_args()
    print(asyncio.run(run(args.out, int8=not args.fp32, runtime=args.runtime)))


if __name__ == "__main__":
    main()
