from __future__ import annotations

import pytest

from benchmarks.bench.load import TraceEntry
from benchmarks.bench.prompts import COMMON_WORDS, conversations, from_trace, synthetic


def word_count(text: str) -> int:
    return len(text.split())


def test_synthetic_is_deterministic_per_seed() -> None:
    assert synthetic(20, (5, 50), (10, 20), seed=1) == synthetic(20, (5, 50), (10, 20), seed=1)
    assert synthetic(20, (5, 50), (10, 20), seed=1) != synthetic(20, (5, 50), (10, 20), seed=2)


def test_synthetic_respects_the_inclusive_ranges() -> None:
    requests = synthetic(500, (3, 6), (1, 4), seed=0)
    lengths = {word_count(request.messages[0]["content"]) for request in requests}
    max_tokens = {request.max_tokens for request in requests}
    assert lengths == {3, 4, 5, 6}
    assert max_tokens == {1, 2, 3, 4}
    assert all(request.messages[0]["role"] == "user" and len(request.messages) == 1 for request in requests)
    assert set(requests[0].messages[0]["content"].split()) <= set(COMMON_WORDS)


def test_word_list_is_a_few_hundred_distinct_words() -> None:
    assert len(set(COMMON_WORDS)) == len(COMMON_WORDS) >= 300


@pytest.mark.parametrize("bad", [(0, 5), (6, 5)])
def test_bad_ranges_raise(bad: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="low <= high"):
        synthetic(1, bad, (1, 2))
    with pytest.raises(ValueError, match="output_tokens"):
        conversations(1, output_tokens=bad)


def test_conversations_are_deterministic_per_seed() -> None:
    assert conversations(10, seed=4) == conversations(10, seed=4)
    assert conversations(10, seed=4) != conversations(10, seed=5)


def test_conversations_alternate_roles_and_end_with_the_user() -> None:
    requests = conversations(200, seed=0, output_tokens=(32, 128))
    prior_exchanges = set()
    for request in requests:
        roles = [message["role"] for message in request.messages]
        assert roles[0] == "system"
        assert roles[-1] == "user"
        turns = roles[1:]
        assert turns == ["user", "assistant"] * (len(turns) // 2) + ["user"]
        prior_exchanges.add(len(turns) // 2)
        assert all(message["content"] for message in request.messages)
        assert 32 <= request.max_tokens <= 128
    assert prior_exchanges == {1, 2, 3, 4}


def test_from_trace_sizes_each_prompt_from_its_entry() -> None:
    entries = [TraceEntry(0.0, 12, 7), TraceEntry(0.5, 300, 64)]
    requests = from_trace(entries, seed=3)
    assert [word_count(request.messages[0]["content"]) for request in requests] == [12, 300]
    assert [request.max_tokens for request in requests] == [7, 64]
    assert requests == from_trace(entries, seed=3)
