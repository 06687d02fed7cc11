"""Gemma 4's tool calls, read as vLLM's ``gemma4`` parser reads them.

Gemma 4 writes each call as ``<|tool_call>call:NAME{key:value,...}<tool_call|>``, calls one after another, perhaps
after some text. The arguments are not JSON: keys are bare, a string is delimited by the ``<|"|>`` token, and any
other value is written bare (``42``, ``true``), or as ``{...}`` and ``[...]`` of the same kinds. Its chat template
writes earlier calls the same way, from the arguments as an object. The markers are special tokens.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

CALL, CALL_END = "<|tool_call>", "<tool_call|>"
STRING = '<|"|>'
_SPACE = " \t\n\r"


class _Malformed(ValueError):
    """The text is not a value in Gemma 4's format."""


def gemma4_calls(text: str) -> list[tuple[str, str]]:
    """The whole calls in ``text``, as (name, arguments as JSON text), in order, up to the first not yet closed by
    ``<tool_call|>`` or not written as a call."""
    calls, start = [], text.find(CALL)
    while start >= 0:
        end = text.find(CALL_END, start)
        if end < 0:
            break
        body = text[start + len(CALL) : end].strip()
        # "call:NAME{...}"; some checkpoints leave out "call" (as vLLM notes)
        name_end = body.find("{")
        head = body[:name_end] if name_end >= 0 else body
        if not head.startswith(("call:", ":")) or not body.endswith("}"):
            break
        name = head.split(":", 1)[1].strip()
        try:
            arguments, after = _object(body, name_end)
        except _Malformed:
            break
        if not name or after != len(body):
            break
        calls.append((name, json.dumps(arguments, ensure_ascii=False)))
        start = text.find(CALL, end + len(CALL_END))
    return calls


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in _SPACE:
        i += 1
    return i


def _value(text: str, i: int) -> tuple[Any, int]:
    """The value written from ``i`` and where it ends."""
    i = _skip_space(text, i)
    if i == len(text):
        raise _Malformed("a value is missing")
    if text.startswith(STRING, i):
        end = text.find(STRING, i + len(STRING))
        if end < 0:
            raise _Malformed("a string is not closed")
        return text[i + len(STRING) : end], end + len(STRING)
    if text[i] == "{":
        return _object(text, i)
    if text[i] == "[":
        return _array(text, i)
    end = i
    while end < len(text) and text[end] not in ",}]":
        end += 1
    return _bare(text[i:end].strip()), end


def _bare(word: str) -> Any:
    """A value written without delimiters, read as vLLM reads it: a boolean, null, a number, else the text."""
    if word in ("true", "false"):
        return word == "true"
    if word.lower() in ("null", "none", "nil"):
        return None
    try:
        return float(word) if "." in word else int(word)
    except ValueError:
        return word


def _object(text: str, i: int) -> tuple[dict[str, Any], int]:
    """The object whose ``{`` is at ``i``, and where it ends (after its ``}``)."""
    pairs, end = _items(text, i, "}", _pair)
    return dict(pairs), end


def _array(text: str, i: int) -> tuple[list[Any], int]:
    """The array whose ``[`` is at ``i``, and where it ends (after its ``]``)."""
    return _items(text, i, "]", _value)


def _pair(text: str, i: int) -> tuple[tuple[str, Any], int]:
    """An object's key and value written from ``i``, and where they end."""
    if text.startswith(STRING, i):  # a key may be delimited as a string is
        key, i = _value(text, i)
    else:
        colon = text.find(":", i)
        key = text[i:colon].strip() if colon >= 0 else ""
        if not key or STRING in key or any(c in key for c in ",{}[]"):
            raise _Malformed("a key has no value")
        i = colon
    i = _skip_space(text, i)
    if not text.startswith(":", i):
        raise _Malformed("a key has no value")
    value, i = _value(text, i + 1)
    return (str(key), value), i


def _items(text: str, i: int, close: str, read: Callable[[str, int], tuple[Any, int]]) -> tuple[list[Any], int]:
    """The items ``read`` reads from after the opening bracket at ``i``, separated by commas up to ``close``, and
    where they end (after ``close``)."""
    items: list[Any] = []
    i = _skip_space(text, i + 1)
    while True:
        if i == len(text):
            raise _Malformed(f"{close} is missing")
        if text[i] == close:
            return items, i + 1
        item, i = read(text, i)
        items.append(item)
        i = _skip_space(text, i)
        if text.startswith(",", i):
            i = _skip_space(text, i + 1)
        elif not text.startswith(close, i):
            raise _Malformed("items are not separated")
