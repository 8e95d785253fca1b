"""The kernel table: one callable per kernel, chosen once per process by the device backend.

``MOETRAIN_KERNELS`` replaces entries by variant name for the whole process, e.g. the path before
the fast kernels: ``MOETRAIN_KERNELS=grouped_gemm=torch-loop,softcap_attention=torch-reference``
(benchmarks compare paths side by side this way; see docs/benchmarking.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from moetrain.kernels.activations import glu_reference
from moetrain.kernels.attention import attention_reference, attention_sdpa
from moetrain.kernels.grouped_gemm import grouped_gemm_reference, grouped_gemm_torch, grouped_mm_available
from moetrain.kernels.rms_norm import rms_norm_reference
from moetrain.kernels.rotary import rotary_reference

KERNELS_ENV = "MOETRAIN_KERNELS"


@dataclass(frozen=True)
class KernelTable:
    """Signatures (see each reference implementation for shapes):

    rms_norm(x, weight, eps); rotary(t, freqs); glu(x, activation, gelu_approximate);
    attention(q, k, v, scale, softcap, causal, mask, dropout_p) -> out, for models without a
    logit soft-cap; softcap_attention: same signature, must apply ``softcap`` exactly (Grok-1);
    grouped_gemm(x, weights [experts, in, out], tokens_per_expert [experts] tensor).
    """

    rms_norm: Callable = rms_norm_reference
    rotary: Callable = rotary_reference
    glu: Callable = glu_reference
    attention: Callable = attention_sdpa
    softcap_attention: Callable = attention_reference
    grouped_gemm: Callable = grouped_gemm_reference
    variants: dict[str, str] = field(default_factory=dict)  # kernel -> variant name, for logs

    def attention_for(self, softcap: float | None) -> Callable:
        """The attention callable for a model with (or without) a logit soft-cap."""
        return self.attention if softcap is None else self.softcap_attention

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.variants.items()))


# Variants that run on every backend (pure torch), selectable through MOETRAIN_KERNELS.
TORCH_VARIANTS: dict[str, dict[str, Callable]] = {
    "attention": {"torch-reference": attention_reference, "torch-sdpa": attention_sdpa},
    "softcap_attention": {"torch-reference": attention_reference},
    "grouped_gemm": {"torch-loop": grouped_gemm_reference, "torch-grouped-mm": grouped_gemm_torch},
    "rms_norm": {"torch": rms_norm_reference},
    "rotary": {"torch": rotary_reference},
    "glu": {"torch": glu_reference},
}


def reference_table() -> KernelTable:
    """Pure torch everywhere: SDPA for uncapped attention, the reference for soft-capped attention,
    and one ``torch._grouped_mm`` per expert projection where this torch has it."""
    grouped = "torch-grouped-mm" if grouped_mm_available() else "torch-loop"
    return KernelTable(
        grouped_gemm=TORCH_VARIANTS["grouped_gemm"][grouped],
        variants={"rms_norm": "torch", "rotary": "torch", "glu": "torch", "attention": "torch-sdpa",
                  "softcap_attention": "torch-reference", "grouped_gemm": grouped},
    )


def with_variant(table: KernelTable, kernel: str, variant: str, fn: Callable) -> KernelTable:
    return dataclasses.replace(table, **{kernel: fn}, variants={**table.variants, kernel: variant})


def apply_overrides(table: KernelTable, spec: str | None, extra: dict[str, dict[str, Callable]] | None = None
                    ) -> KernelTable:
    """``spec``: "kernel=variant,..." (the MOETRAIN_KERNELS format). ``extra``: the backend's own
    variants, next to TORCH_VARIANTS. An unknown kernel or variant is an error naming the choices."""
    if not spec:
        return table
    choices = {k: {**v, **(extra or {}).get(k, {})} for k, v in TORCH_VARIANTS.items()}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kernel, _, variant = item.partition("=")
        if kernel not in choices:
            raise ValueError(f"{KERNELS_ENV}: unknown kernel {kernel!r} in {item!r}; kernels: {', '.join(choices)}")
        if variant not in choices[kernel]:
            raise ValueError(f"{KERNELS_ENV}: {kernel} has no variant {variant!r} here; "
                             f"choose from {', '.join(choices[kernel])}")
        table = with_variant(table, kernel, variant, choices[kernel][variant])
    return table


def env_overrides() -> str | None:
    return os.environ.get(KERNELS_ENV)


_ACTIVE: KernelTable | None = None


def set_kernels(table: KernelTable) -> None:
    global _ACTIVE
    _ACTIVE = table


def get_kernels() -> KernelTable:
    """The process's kernel table (the reference table until a backend's setup sets one)."""
    global _ACTIVE
    if _ACTIVE is None:
        _ACTIVE = apply_overrides(reference_table(), env_overrides())
    return _ACTIVE


@contextlib.contextmanager
def override_kernels(**kernels):
    """Temporarily replace entries: ``with override_kernels(attention=attention_reference): ...``."""
    previous = get_kernels()
    set_kernels(dataclasses.replace(previous, **kernels))
    try:
        yield get_kernels()
    finally:
        set_kernels(previous)
