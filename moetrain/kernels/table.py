"""The kernel table: one callable per kernel, chosen once per process by the device backend."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from moetrain.kernels.activations import glu_reference
from moetrain.kernels.attention import attention_reference, attention_sdpa
from moetrain.kernels.grouped_gemm import grouped_gemm_reference
from moetrain.kernels.rms_norm import rms_norm_reference
from moetrain.kernels.rotary import rotary_reference

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelTable:
    """Signatures (see each reference implementation for shapes):

    rms_norm(x, weight, eps); rotary(t, freqs); glu(x, activation, gelu_approximate);
    attention(q, k, v, scale, softcap, causal, mask, dropout_p) -> out;
    attention_softcap: whether ``attention`` itself applies soft-capping (else the reference does);
    grouped_gemm(x, weights, tokens_per_expert).
    """

    rms_norm: Callable = rms_norm_reference
    rotary: Callable = rotary_reference
    glu: Callable = glu_reference
    attention: Callable = attention_reference
    attention_softcap: bool = True
    grouped_gemm: Callable = grouped_gemm_reference
    variants: dict[str, str] = field(default_factory=dict)  # kernel -> variant name, for logs

    def attention_for(self, softcap: float | None) -> Callable:
        """The attention callable that honours ``softcap``: falls back to the reference if needed."""
        if softcap is None or self.attention_softcap:
            return self.attention
        _log_softcap_fallback(self.variants.get("attention", "fused"))
        return attention_reference


_SOFTCAP_FALLBACK_LOGGED = False


def _log_softcap_fallback(variant: str) -> None:
    global _SOFTCAP_FALLBACK_LOGGED
    if not _SOFTCAP_FALLBACK_LOGGED:
        logger.warning(
            "attention kernel %r cannot soft-cap logits; using the torch reference for soft-capped "
            "attention (Grok-1)", variant
        )
        _SOFTCAP_FALLBACK_LOGGED = True


def reference_table() -> KernelTable:
    """Pure-torch references everywhere, SDPA for uncapped attention (it is part of torch)."""
    return KernelTable(
        attention=attention_sdpa,
        attention_softcap=True,  # attention_sdpa falls back to the reference itself
        variants={"rms_norm": "torch", "rotary": "torch", "glu": "torch", "attention": "torch-sdpa",
                  "grouped_gemm": "torch-loop"},
    )


_ACTIVE: KernelTable | None = None


def set_kernels(table: KernelTable) -> None:
    global _ACTIVE
    _ACTIVE = table


def get_kernels() -> KernelTable:
    """The process's kernel table (the reference table until a backend's setup sets one)."""
    global _ACTIVE
    if _ACTIVE is None:
        _ACTIVE = reference_table()
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
