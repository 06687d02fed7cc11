"""int4 quantization into AWQ tensors: how close the weights stay, the exact bit layout vLLM reads, and which layer
sizes can be quantized. That vLLM loads and runs the result, and how much of the model's quality it keeps, is
tests/e2e/test_int4.py."""

from __future__ import annotations

import pytest
import torch

from services.worker.quantize import NotQuantizable, check_shapes, dequantize_int4, quantize_int4


def test_every_weight_comes_back_within_half_a_quantization_step_of_its_group() -> None:
    torch.manual_seed(0)
    weight = torch.randn(96, 128) * 0.05 + 0.01  # not centred on 0: the zero points differ between groups
    q = quantize_int4(weight)
    assert q["qweight"].shape == (128, 96 // 8) and q["qweight"].dtype == torch.int32
    assert q["qzeros"].shape == (4, 96 // 8) and q["qzeros"].dtype == torch.int32
    assert q["scales"].shape == (4, 96) and q["scales"].dtype == torch.float16
    error = (dequantize_int4(q["qweight"], q["qzeros"], q["scales"]) - weight).abs()
    step = q["scales"].float().repeat_interleave(32, dim=0).t()  # [out, in], each weight's own group scale
    # half a step, plus what rounding the scale to float16 and the zero point to an integer moves a group's ends
    assert bool((error <= step * 0.52).all())
    assert error.max() > 0  # it is lossy: 4 bits, not a copy


def test_asymmetric_groups_use_all_16_levels_for_a_group_on_one_side_of_zero() -> None:
    weight = torch.zeros(32, 32)
    weight[0] = torch.linspace(0.0, 1.5, 32)  # a group of positive weights only: 0 is its low end
    q = quantize_int4(weight)
    back = dequantize_int4(q["qweight"], q["qzeros"], q["scales"])
    assert q["scales"][0, 0].item() == pytest.approx(0.1, rel=1e-3)  # 1.5 / 15: a symmetric grid would need twice
    assert (back[0] - weight[0]).abs().max().item() <= 0.05 + 1e-3


def test_packing_follows_awqs_order_along_the_output_channels() -> None:
    weight = torch.zeros(32, 32)
    weight[:, 0] = -1.0  # every group's low end: level 0 for input channel 0
    weight[:, 1] = 0.875  # the high end: level 15
    weight[3, 2] = 0.5  # 0.5 / (1.875 / 15) = 4 steps above the zero point
    q = quantize_int4(weight)
    zero = round(1.0 / (1.875 / 15))  # 8
    assert q["qzeros"][0, 0].item() == _packed([zero] * 8)
    # output channels 0..7 sit in the int32's slots 0, 4, 1, 5, 2, 6, 3, 7 (AWQ order 0, 2, 4, 6, 1, 3, 5, 7)
    levels = [zero] * 8
    levels[3] = zero + 4
    assert q["qweight"][2, 0].item() == _packed([levels[c] for c in (0, 2, 4, 6, 1, 3, 5, 7)])
    assert q["qweight"][0, 0].item() == 0  # input channel 0: level 0 for every output channel
    assert q["qweight"][1, 1].item() == _packed([15] * 8)


def _packed(slots: list[int]) -> int:
    word = sum(level << (4 * i) for i, level in enumerate(slots))
    return word - (1 << 32) if word >= 1 << 31 else word  # as a signed int32


def test_layers_must_split_into_whole_groups_or_the_model_is_refused() -> None:
    check_shapes([(576, 576), (192, 576), (1536, 576), (576, 1536)])  # SmolLM2's
    with pytest.raises(NotQuantizable, match="multiple of 32"):
        check_shapes([(128, 48)])
    with pytest.raises(NotQuantizable):
        check_shapes([(100, 128)])  # output size not a multiple of 32
