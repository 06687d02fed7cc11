"""A prompt given as token ids is screened as the text they decode to; ids outside the vocabulary are refused."""

from __future__ import annotations

import pytest

from services.safety.prompt_tokens import UndecodablePrompt, decoded_prompt
from services.safety.screening import prompt_parts
from shared.contracts import CompletionRequested


class LetterTokenizer:
    """A tokenizer of pure logic for the test: token i is the i-th letter."""

    def __len__(self) -> int:
        return 26

    def decode(self, token_ids: list[int]) -> str:
        return "".join(chr(ord("a") + t) for t in token_ids)


def test_the_ids_decode_to_the_text_that_is_screened_and_an_id_outside_the_vocabulary_is_refused() -> None:
    assert decoded_prompt(LetterTokenizer(), [7, 8], "letters") == "hi"
    with pytest.raises(UndecodablePrompt, match="token id 26 is not in letters's vocabulary \\(0 to 25\\)"):
        decoded_prompt(LetterTokenizer(), [7, 26], "letters")


def test_a_request_takes_exactly_one_kind_of_prompt() -> None:
    ids = CompletionRequested(request_id="r", model="m", reply_topic="t", prompt_token_ids=[7, 8])
    assert not ids.is_chat() and ids.prompt_tokens_estimate() == 2 and ids.token_weight() == 2 + 256
    # what the stage screens: the request with the decoded text as its prompt
    assert prompt_parts(ids.model_copy(update={"prompt": "hi", "prompt_token_ids": None})) == ["hi"]
    with pytest.raises(ValueError, match="exactly one of messages"):
        CompletionRequested(request_id="r", model="m", reply_topic="t", prompt="hi", prompt_token_ids=[7])
    with pytest.raises(ValueError):
        CompletionRequested(request_id="r", model="m", reply_topic="t", prompt_token_ids=[-1])
