"""Gemma 4's tool calls, read as vLLM's ``gemma4`` parser reads them.

Gemma 4 writes each call as ``<|tool_call>call:NAME{key:value,...}<tool_call|>``, calls one after another, perhaps
after some text. The arguments are not JSON: keys are bare, a string is delimited by the ``<|"|>`` token, and any
other value is written bare (``42``, ``true``), or as ``{...}`` and ``[...]`` of the same kinds. Its chat template
writes earlier calls the same way, from the arguments as an object. The markers are special tokens.

A call is announced once named, and its arguments stream as the XML-like formats' do (tool_calls._typed_arguments):
the pairs whose values are whole, then a string value as the model writes it; a number or a nested value comes once
whole. Pairs that parse are kept and the first that does not ends them, so what streamed stays a prefix of the
final arguments, whatever the model writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from services.worker.markup import longest_tag_start, open_arguments, skip_space

CALL, CALL_END = "<|tool_call>", "<tool_call|>"
STRING = '<|"|>'


class _Malformed(ValueError):
    """The text is not a value in Gemma 4's format."""


def gemma4_calls(text: str) -> list[tuple[str, str]]:
    """The calls in ``text``, as (name, arguments as JSON text), in order, up to the first not written as a call or not
    yet closed by ``<tool_call|>``, whose arguments are those written so far (see ``_arguments``)."""
    calls, start = [], text.find(CALL)
    while start >= 0:
        end = text.find(CALL_END, start)
        body = text[start + len(CALL) : end if end >= 0 else len(text)].lstrip()
        # "call:NAME{...}"; some checkpoints leave out "call" (as vLLM notes)
        name_end = body.find("{")
        head = body[:name_end]
        if name_end < 0 or not head.startswith(("call:", ":")) or not (name := head.split(":", 1)[1].strip()):
            break  # no call, or its name is not whole yet
        written = body[name_end + 1 :]
        if end < 0:  # a part of <tool_call|> at the end is not known yet
            written = written[: len(written) - longest_tag_start(written, CALL_END)]
        calls.append((name, _arguments(written, closed=end >= 0)))
        if end < 0:
            break
        start = text.find(CALL, end + len(CALL_END))
    return calls


def _arguments(written: str, closed: bool) -> str:
    """The JSON text of a call's arguments written after its ``{``: the pairs whose values are whole (a key written
    twice keeps its first value), up to the first that is not written as a pair; a string the model left open at the
    call's end runs to it. A call not yet ``closed`` has the text so far, which the closed call's text continues: the
    closing brace waits, a string value still being written streams as written, and a value of another kind comes once
    whole."""
    pairs: dict[str, Any] = {}
    i, separated = skip_space(written, 0), True  # separated: a pair may begin at i
    while i < len(written) and written[i] != "}":
        try:
            key, at = _key(written, i)
            value, after = _value(written, at)
        except _Malformed:
            break
        bare = not written.startswith((STRING, "{", "["), skip_space(written, at))
        if bare and after == len(written) and not closed:
            break  # a bare value may go on
        pairs.setdefault(key, value)
        i = skip_space(written, after)
        separated = written.startswith(",", i)
        if not separated:
            break
        i = skip_space(written, i + 1)
    being_written = _STRING_BEGUN.match(written, i) if separated else None
    if being_written is not None and (key := being_written.group(1).strip()) not in pairs:
        value = written[being_written.end() :]
        if not closed:
            return open_arguments(pairs, (key, value[: len(value) - longest_tag_start(value, STRING)]))
        pairs[key] = value
    return json.dumps(pairs, ensure_ascii=False) if closed else open_arguments(pairs, None)


_STRING_BEGUN = re.compile(r"([^:,{}\[\]<>]+):\s*" + re.escape(STRING) + r"(?!.*" + re.escape(STRING) + ")", re.DOTALL)
"""A pair whose string value is still being written: a bare key, a colon and the string's opening delimiter, with no
closing one after it."""


def _value(text: str, i: int) -> tuple[Any, int]:
    """The value written from ``i`` and where it ends."""
    i = skip_space(text, i)
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
    """The object whose ``{`` is at ``i``, and where it ends (after its ``}``); a key written twice keeps its first
    value."""
    pairs, end = _items(text, i, "}", _pair)
    result: dict[str, Any] = {}
    for key, value in pairs:
        result.setdefault(key, value)
    return result, end


def _array(text: str, i: int) -> tuple[list[Any], int]:
    """The array whose ``[`` is at ``i``, and where it ends (after its ``]``)."""
    return _items(text, i, "]", _value)


def _pair(text: str, i: int) -> tuple[tuple[str, Any], int]:
    """An object's key and value written from ``i``, and where they end."""
    key, i = _key(text, i)
    value, i = _value(text, i)
    return (key, value), i


def _key(text: str, i: int) -> tuple[str, int]:
    """An object's key written from ``i``, and where its value begins (after the colon)."""
    if text.startswith(STRING, i):  # a key may be delimited as a string is
        key, i = _value(text, i)
    else:
        colon = text.find(":", i)
        key = text[i:colon].strip() if colon >= 0 else ""
        if not key or STRING in key or any(c in key for c in ",{}[]"):
            raise _Malformed("a key has no value")
        i = colon
    i = skip_space(text, i)
    if not text.startswith(":", i):
        raise _Malformed("a key has no value")
    return str(key), i + 1


def _items(text: str, i: int, close: str, read: Callable[[str, int], tuple[Any, int]]) -> tuple[list[Any], int]:
    """The items ``read`` reads from after the opening bracket at ``i``, separated by commas up to ``close``, and
    where they end (after ``close``)."""
    items: list[Any] = []
    i = skip_space(text, i + 1)
    while True:
        if i == len(text):
            raise _Malformed(f"{close} is missing")
        if text[i] == close:
            return items, i + 1
        item, i = read(text, i)
        items.append(item)
        i = skip_space(text, i)
        if text.startswith(",", i):
            i = skip_space(text, i + 1)
        elif not text.startswith(close, i):
            raise _Malformed("items are not separated")
