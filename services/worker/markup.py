"""What the readers of a model's calls and reasoning share as its text streams: its tags, white space, and the JSON
text of a call's arguments not yet closed."""

from __future__ import annotations

import json
from typing import Any

SPACE = " \t\n\r"


def longest_tag_start(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` could begin ``tag``."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-length:]):
            return length
    return 0


def skip_space(text: str, i: int) -> int:
    """Where the white space from ``i`` ends."""
    while i < len(text) and text[i] in SPACE:
        i += 1
    return i


def open_arguments(arguments: dict[str, Any], string: tuple[str, str] | None) -> str:
    """The JSON text so far of a call's arguments not yet closed: the pairs written whole, then ``string``, the key
    and the text so far of a string value still being written. The closed call's text, ``json.dumps(arguments,
    ensure_ascii=False)`` with the string's pair in it, continues it: the closing quote and brace come with their
    ends."""
    text = json.dumps(arguments, ensure_ascii=False)[:-1]
    if string is None:
        return text
    key, value = string
    begun = json.dumps(value, ensure_ascii=False)[:-1]
    return f"{text}{', ' if arguments else ''}{json.dumps(key, ensure_ascii=False)}: {begun}"
