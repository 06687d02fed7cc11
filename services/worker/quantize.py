"""int4 weight-only quantization into the AWQ checkpoint format, which vLLM loads on CPU (its CPUWNA16 kernel) and on
GPUs. Round-to-nearest, asymmetric (a scale and an integer zero point per group of 32 input channels): no calibration
data is needed, and none ships with the models here. Pure: tensors in, tensors out.

Why asymmetric groups of 32: SmolLM2's weights come from a Q4_1 GGUF, itself asymmetric 4-bit in blocks of 32 along
the input. On the Python language reference its perplexity goes from 14.70 (the float32 folder) to 18.02 this way,
against 21.98 with the symmetric groups of 64 used before, at the same speed (benchmarks/reports/variants/
int4-formats-ab.md). GPTQ, which corrects rounding errors with calibration samples, was tried with a few thousand
tokens of the model's own output: it gained on text like its calibration samples and lost on other text (26.7 on the
reference), so it is not used.

The format (AWQ "gemm", as AutoAWQ writes it), for a linear layer's weight W of shape [out, in]:
- ``qweight`` int32 [in, out / 8]: eight 4-bit values per int32 along the output dimension, in AWQ's order (output
  channels 0, 2, 4, 6, 1, 3, 5, 7 of each eight, from the lowest bits up);
- ``qzeros`` int32 [in / group, out / 8]: each group's zero point (0..15), packed the same way;
- ``scales`` float16 [in / group, out].
A value q (0..15) stands for scale * (q - zero).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

BITS = 4
PER_INT32 = 32 // BITS
GROUP_SIZE = 32
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
"""Output channel (within each eight) held by the 4-bit slots of an int32, lowest bits first."""
LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The decoder layers' linear weights that are quantized (embeddings, norms and the LM head stay in float16)."""


class NotQuantizable(ValueError):
    """The model's layer sizes do not fit the format's groups and vLLM's kernels."""


def check_shapes(shapes: Iterable[tuple[int, int]]) -> None:
    """Raises NotQuantizable unless every [out, in] shape splits into whole groups of input channels and has an output
    size that vLLM's CPU kernel takes (a multiple of 32)."""
    shapes = list(shapes)
    if not all(inputs % GROUP_SIZE == 0 and outputs % 32 == 0 for outputs, inputs in shapes):
        raise NotQuantizable(
            f"int4 needs every quantized layer's input size to be a multiple of {GROUP_SIZE} and its output size a "
            f"multiple of 32; shapes [out, in]: {sorted(set(shapes))}"
        )


def quantize_int4(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """``weight`` [out, in] as AWQ tensors (qweight, qzeros, scales): each group's range [min, max], widened to
    include 0, split into 15 steps, and each weight rounded to the nearest of the 16 levels."""
    outputs, inputs = weight.shape
    grouped = weight.float().t().reshape(inputs // GROUP_SIZE, GROUP_SIZE, outputs)
    low = grouped.amin(dim=1).clamp(max=0.0)
    high = grouped.amax(dim=1).clamp(min=0.0)
    scales = ((high - low) / 15).clamp(min=torch.finfo(torch.float16).tiny).half()
    zeros = torch.round(-low / scales.float()).clamp(0, 15).to(torch.int32)
    levels = torch.round(grouped / scales.float()[:, None, :]) + zeros[:, None, :]
    values = levels.clamp(0, 15).to(torch.int32).reshape(inputs, outputs)
    return {"qweight": _pack(values), "qzeros": _pack(zeros), "scales": scales}


def dequantize_int4(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The [out, in] float32 weight that AWQ tensors stand for."""
    values, zeros = _unpack(qweight), _unpack(qzeros)  # [in, out], [groups, out]
    group = values.shape[0] // zeros.shape[0]
    levels = values - zeros.repeat_interleave(group, dim=0)
    return (levels.float() * scales.float().repeat_interleave(group, dim=0)).t().contiguous()


def _pack(values: torch.Tensor) -> torch.Tensor:
    """4-bit values (int32 [rows, out], 0..15) packed eight to an int32 along the output dimension, in AWQ's order."""
    rows, outputs = values.shape
    eights = values.reshape(rows, outputs // PER_INT32, PER_INT32)
    packed = torch.zeros((rows, outputs // PER_INT32), dtype=torch.int32)
    for slot, channel in enumerate(AWQ_ORDER):
        packed |= eights[:, :, channel] << (BITS * slot)
    return packed


def _unpack(packed: torch.Tensor) -> torch.Tensor:
    rows, words = packed.shape
    values = torch.zeros((rows, words, PER_INT32), dtype=torch.int32)
    for slot, channel in enumerate(AWQ_ORDER):
        values[:, :, channel] = (packed >> (BITS * slot)) & 0xF
    return values.reshape(rows, words * PER_INT32)
