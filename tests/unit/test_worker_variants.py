from __future__ import annotations

import pytest

from services.worker.variants import VariantUnavailable, serving_variant


def test_no_wish_or_the_loaded_variant_is_served_as_is() -> None:
    assert serving_variant(None, fallback=False, loaded="fp32", on_cpu=True) == "fp32"
    assert serving_variant("int8", fallback=False, loaded="int8", on_cpu=True) == "int8"


def test_another_variant_falls_back_only_when_allowed() -> None:
    assert serving_variant("int8", fallback=True, loaded="fp32", on_cpu=True) == "fp32"
    with pytest.raises(VariantUnavailable, match="not loaded on this worker.*serves 'fp32'.*variant_fallback"):
        serving_variant("int8", fallback=False, loaded="fp32", on_cpu=True)


def test_a_variant_the_hardware_cannot_run_says_why() -> None:
    with pytest.raises(VariantUnavailable, match="cannot run on this hardware: fp8"):
        serving_variant("fp8", fallback=False, loaded="fp32", on_cpu=True)
    with pytest.raises(VariantUnavailable, match="there is no variant 'q3'"):
        serving_variant("q3", fallback=False, loaded="fp32", on_cpu=True)
