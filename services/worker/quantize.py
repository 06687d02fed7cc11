"""int4 weight-only quantization into the GPTQ checkpoint format, which vLLM loads on CPU (its CPUWNA16 kernel) and on
GPUs. Round-to-nearest, symmetric, per group of input channels: no calibration data is needed, and none ships with the
models here. GPTQ proper corrects rounding errors with calibration samples; RTN with groups of 64 still keeps
SmolLM2's answers (tests/e2e/test_int4.py). Pure: tensors in, tensors out.

The format (GPTQ "v1", as AutoGPTQ writes it), for a linear layer's weight W of shape [out, in]:
- ``qweight`` int32 [in / 8, out]: eight 4-bit values per int32 along the input dimension, lowest bits first;
- ``scales`` float16 [in / group, out];
- ``qzeros`` int32 [in / group, out / 8]: the zero point minus one (symmetric: 7), packed along the output dimension;
- ``g_idx`` int32 [in]: the group of each input channel (in order: no activation reordering).
A value q (0..15) stands for scale * (q - 8).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

BITS = 4
PER_INT32 = 32 // BITS
GROUP_SIZES = (64, 32)  # tried in this order; smaller groups are more precise and take a little more memory
LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The decoder layers' linear weights that are quantized (embeddings, norms and the LM head stay in float16)."""


class NotQuantizable(ValueError):
    """The model's layer sizes do not fit the format's groups and vLLM's kernels."""


def group_size_for(shapes: Iterable[tuple[int, int]]) -> int:
    """The group size to use for weights of these [out, in] shapes: input sizes must split into whole groups, and vLLM's
    CPU kernel takes sizes that are multiples of 32 only."""
    shapes = list(shapes)
    for group in GROUP_SIZES:
        if all(inputs % group == 0 and outputs % 32 == 0 for outputs, inputs in shapes):
            return group
    raise NotQuantizable(
        f"int4 needs every quantized layer's input size to be a multiple of {GROUP_SIZES[-1]} and its output size a "
        f"multiple of 32; shapes [out, in]: {sorted(set(shapes))}"
    )


def quantize_int4(weight: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
    """``weight`` [out, in] as GPTQ tensors (qweight, scales, qzeros, g_idx)."""
    outputs, inputs = weight.shape
    grouped = weight.float().t().reshape(inputs // group_size, group_size, outputs)
    # symmetric: the largest magnitude of each group maps to -8 * scale or 7.5 * scale, within rounding of 7 or -8
    scales = (grouped.abs().amax(dim=1) / 7.5).clamp(min=torch.finfo(torch.float16).tiny).half()
    levels = torch.round(grouped / scales.float()[:, None, :]) + 8
    values = levels.clamp(0, 15).to(torch.int32).reshape(inputs, outputs)
    zeros = torch.full((inputs // group_size, outputs), 8 - 1, dtype=torch.int32)
    return {
        "qweight": _pack(values, dim=0),
        "scales": scales,
        "qzeros": _pack(zeros, dim=1),
        "g_idx": torch.arange(inputs, dtype=torch.int32) // group_size,
    }


def dequantize_int4(qweight: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """The [out, in] float32 weight that GPTQ tensors of a symmetric checkpoint stand for."""
    values = _unpack(qweight, dim=0)  # [in, out]
    group_scales = scales.float().repeat_interleave(group_size, dim=0)
    return ((values - 8).float() * group_scales).t().contiguous()


def _pack(values: torch.Tensor, dim: int) -> torch.Tensor:
    """4-bit values (int32 tensor of 0..15) packed eight to an int32 along ``dim``."""
    moved = values.movedim(dim, 0)
    packed = torch.zeros((moved.shape[0] // PER_INT32, *moved.shape[1:]), dtype=torch.int32)
    for i in range(PER_INT32):
        packed |= moved[i::PER_INT32] << (BITS * i)
    return packed.movedim(0, dim).contiguous()


def _unpack(packed: torch.Tensor, dim: int) -> torch.Tensor:
    moved = packed.movedim(dim, 0)
    parts = [(moved >> (BITS * i)) & 0xF for i in range(PER_INT32)]
    values = torch.stack(parts, dim=1).reshape(moved.shape[0] * PER_INT32, *moved.shape[1:])
    return values.movedim(0, dim).contiguous()
