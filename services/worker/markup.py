"""Tags in a model's text as it streams, shared by the readers of its calls and its reasoning."""

from __future__ import annotations


def longest_tag_start(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` could begin ``tag``."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-length:]):
            return length
    return 0
