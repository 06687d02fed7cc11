"""A real tokenizer made in the tests, for those that need one and no model: one token per character of printable
ASCII and of white space, and tokens of their own for the texts the test names."""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

UNKNOWN = "[UNK]"
"""Token 0: any other character, and the end of the text."""


def char_tokenizer(tokens: Sequence[str] = (), special: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """``tokens``: texts that are tokens of their own; ``special``: the same, as special tokens."""
    vocab = {UNKNOWN: 0} | {chr(c): c - 31 for c in range(32, 127)} | {"\n": 96, "\t": 97, "\r": 98}
    base = Tokenizer(models.WordLevel(vocab, unk_token=UNKNOWN))
    base.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    base.decoder = decoders.Fuse()
    made = PreTrainedTokenizerFast(tokenizer_object=base, unk_token=UNKNOWN, eos_token=UNKNOWN)
    made.add_tokens(list(tokens))
    made.add_special_tokens({"additional_special_tokens": list(special)})
    return made
