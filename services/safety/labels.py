"""The labeled set kept in the repo (``data/labeled.jsonl``): every example's text, categories and source. The split is
a hash of the text, so it never changes when examples are added: about 30% is held out for evaluation."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

LABELED_FILE = Path(__file__).resolve().parent / "data" / "labeled.jsonl"
MODEL_CATEGORIES = ("injection", "violence", "self_harm", "hate", "illegal")
RULE_CATEGORIES = ("pii", "secrets", "deny_list")
CATEGORIES = MODEL_CATEGORIES + RULE_CATEGORIES


@dataclass(frozen=True)
class LabeledExample:
    text: str
    categories: tuple[str, ...]
    source: str
    split: str


def split_of(text: str) -> str:
    return "test" if int(hashlib.sha256(text.encode()).hexdigest(), 16) % 10 < 3 else "train"


def load_labeled(path: Path | None = None) -> list[LabeledExample]:
    examples = []
    for n, line in enumerate((path or LABELED_FILE).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        unknown = set(row["categories"]) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"line {n}: unknown categories {sorted(unknown)}")
        examples.append(LabeledExample(row["text"], tuple(row["categories"]), row["source"], split_of(row["text"])))
    return examples
