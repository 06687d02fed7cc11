"""int4 quantization into GPTQ tensors: how close the weights stay, the exact bit layout vLLM reads, and which layer
sizes can be quantized. That vLLM loads and runs the result is tests/e2e/test_int4.py."""

from __future__ import annotations

import pytest
import torch

from services.worker.quantize import NotQuantizable, dequantize_int4, group_size_for, quantize_int4


def test_every_weight_comes_back_within_half_a_quantization_step() -> None:
    torch.manual_seed(0)
    weight = torch.randn(96, 128) * 0.05
    q = quantize_int4(weight, 64)
    assert q["qweight"].shape == (128 // 8, 96) and q["qweight"].dtype == torch.int32
    assert q["scales"].shape == (2, 96) and q["scales"].dtype == torch.float16
    assert q["qzeros"].shape == (2, 96 // 8) and q["g_idx"].tolist() == [i // 64 for i in range(128)]
    error = (dequantize_int4(q["qweight"], q["scales"], 64) - weight).abs()
    step = q["scales"].float().repeat_interleave(64, dim=0).t()  # [out, in], each weight's own group scale
    # half a step, plus what rounding the scale to float16 moves the group's extreme (7.5 steps, clamped to 7)
    assert bool((error <= step * 0.505).all())
    assert error.max() > 0  # it is lossy: 4 bits, not a copy


def test_packing_puts_eight_values_in_an_int32_lowest_input_channel_in_the_lowest_bits() -> None:
    weight = torch.zeros(32, 32)
    weight[3, 9] = 1.0  # the group's largest magnitude: 7.5 steps, rounded to even (8), clamped to level 15
    weight[3, 0] = -1.0  # -7.5 steps: rounded to -8, level 0
    weight[3, 2] = 0.4  # 3 steps: level 11
    q = quantize_int4(weight, 32)
    assert q["scales"][0, 3].item() == pytest.approx(1 / 7.5, rel=1e-3)

    def packed(levels: list[int]) -> int:
        word = sum(level << (4 * i) for i, level in enumerate(levels))
        return word - (1 << 32) if word >= 1 << 31 else word  # as a signed int32

    assert q["qweight"][0, 3].item() == packed([0, 8, 11, 8, 8, 8, 8, 8])  # input channels 0-7
    assert q["qweight"][1, 3].item() == packed([8, 15, 8, 8, 8, 8, 8, 8])  # input channels 8-15
    assert q["qweight"][0, 4].item() == packed([8] * 8)  # an all-zero column is all at the zero point
    assert q["qzeros"][0, 0].item() == packed([7] * 8)  # the zero point 8, stored minus one


def test_the_group_size_fits_every_layer_or_the_model_is_refused() -> None:
    smollm2 = [(576, 576), (192, 576), (1536, 576), (576, 1536)]
    assert group_size_for(smollm2) == 64
    assert group_size_for([(128, 96)]) == 32
    with pytest.raises(NotQuantizable, match="multiple of 32"):
        group_size_for([(128, 48)])
    with pytest.raises(NotQuantizable):
        group_size_for([(100, 128)])  # output size not a multiple of 32
