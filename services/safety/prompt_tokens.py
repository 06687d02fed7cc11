"""A prompt given as token ids (OpenAI's /v1/completions takes an array of integers), made text with its model's
tokenizer: the safety stage screens that text, and the worker echoes it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol


class Decoder(Protocol):
    """What of a Hugging Face tokenizer this needs."""

    def __len__(self) -> int: ...

    def decode(self, token_ids: list[int]) -> str: ...


class UndecodablePrompt(ValueError):
    """The ids are not all tokens of the model's vocabulary (vLLM refuses them too)."""


def decoded_prompt(tokenizer: Decoder, token_ids: Sequence[int], model: str) -> str:
    """The text ``token_ids`` decode to, special tokens kept (the model reads them); raises UndecodablePrompt for an
    id outside the tokenizer's vocabulary."""
    vocabulary = len(tokenizer)
    outside = next((t for t in token_ids if t >= vocabulary), None)
    if outside is not None:
        raise UndecodablePrompt(f"token id {outside} is not in {model}'s vocabulary (0 to {vocabulary - 1})")
    return tokenizer.decode(list(token_ids))


class NoTokenizer(Exception):
    """The safety stage has no tokenizer of the model: a prompt of its token ids cannot be screened (yet)."""


class ModelTokenizers:
    """Each model's tokenizer, read from the folder its workers built (FERRY_SAFETY_MODELS_DIR, the workers'
    FERRY_WORKER_MODELS_DIR) the first time a prompt of its token ids comes, then kept."""

    def __init__(self, models_dir: Path) -> None:
        self._models_dir = models_dir
        self._loaded: dict[str, Decoder] = {}

    async def text_of(self, model: str, token_ids: Sequence[int]) -> str:
        """Raises NoTokenizer when the model's folder has none, UndecodablePrompt for an id outside its vocabulary."""
        tokenizer = self._loaded.get(model)
        if tokenizer is None:
            folder = self._models_dir / model
            if not (folder / "tokenizer_config.json").is_file():
                raise NoTokenizer(f"the safety stage finds no tokenizer of {model} in {folder}")
            tokenizer = self._loaded[model] = await asyncio.to_thread(_load, folder)
        return decoded_prompt(tokenizer, token_ids, model)


def _load(folder: Path) -> Decoder:
    from transformers import AutoTokenizer  # imported when a prompt of token ids first comes

    tokenizer: Decoder = AutoTokenizer.from_pretrained(str(folder))
    return tokenizer
