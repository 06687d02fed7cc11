"""Fast rules: regular expressions and checksums for PII and secrets, and a deny-list. Pure; microseconds per text."""

from __future__ import annotations

import re
from dataclasses import dataclass

PII = "pii"
SECRETS = "secrets"
DENY_LIST = "deny_list"


@dataclass(frozen=True)
class Finding:
    """One match: its category, what kind it is, and where it is in the text (for masking)."""

    category: str
    kind: str
    start: int
    end: int


_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
# international (+CC ...) or North American (xxx) xxx-xxxx forms, separators optional; 9 to 15 digits
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{3,4}[\s.-]?\d{3,4}(?!\w)")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_SECRETS = [
    ("openai_key", re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}")),
    ("aws_access_key", re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")),
    ("github_token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("slack_token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    ("google_api_key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    ("private_key", re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")),
    ("password_assignment", re.compile(r"(?i)\b(?:password|passwd|api[_-]?key|secret)\s*[:=]\s*\S{8,}")),
]


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies (and 90% of random digit strings fail)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def find(text: str, deny_terms: tuple[str, ...] = ()) -> list[Finding]:
    """Every PII, secret and deny-listed match in ``text``."""
    found = [Finding(PII, "email", m.start(), m.end()) for m in _EMAIL.finditer(text)]
    cards = []
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            cards.append(Finding(PII, "card_number", m.start(), m.end()))
    found += cards
    for m in _PHONE.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        inside_card = any(c.start <= m.start() < c.end for c in cards)
        if 9 <= len(digits) <= 15 and not inside_card:
            found.append(Finding(PII, "phone_number", m.start(), m.end()))
    for kind, pattern in _SECRETS:
        found += [Finding(SECRETS, kind, m.start(), m.end()) for m in pattern.finditer(text)]
    lowered = text.lower()
    for term in deny_terms:
        t = term.lower()
        for m in re.finditer(r"(?<!\w)" + re.escape(t) + r"(?!\w)", lowered):
            found.append(Finding(DENY_LIST, "term", m.start(), m.end()))
    return found


def scores(findings: list[Finding]) -> dict[str, float]:
    """Rules are certain: a category with a finding scores 1.0, one without scores 0.0."""
    return {c: 1.0 if any(f.category == c for f in findings) else 0.0 for c in (PII, SECRETS, DENY_LIST)}


def redact(text: str, findings: list[Finding]) -> str:
    """``text`` with each PII or secret match replaced by ``[KIND]`` (deny-listed terms stay readable)."""
    spans = sorted((f for f in findings if f.category in (PII, SECRETS)), key=lambda f: f.start)
    out, pos = [], 0
    for f in spans:
        if f.start < pos:
            continue
        out.append(text[pos : f.start])
        out.append(f"[{f.kind.upper()}]")
        pos = f.end
    out.append(text[pos:])
    return "".join(out)
