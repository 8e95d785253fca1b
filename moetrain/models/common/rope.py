"""Routes megatron-core's rotary embedding through the kernel table.

megatron-core's SelfAttention calls ``apply_rotary_pos_emb`` (imported into
``megatron.core.transformer.attention``). For the plain case moetrain uses — rotate-half RoPE on
[s, b, heads, head_dim], no packed sequences, no mscale — the kernel table's ``rotary`` computes
the same thing (npu_rotary_mul on Ascend); every other case goes to the upstream function.
"""

from __future__ import annotations

import importlib

from moetrain.kernels import get_kernels

_INSTALLED = False


def install_rotary_kernel() -> None:
    global _INSTALLED
    if _INSTALLED:
        return
    attention = importlib.import_module("megatron.core.transformer.attention")
    upstream = attention.apply_rotary_pos_emb

    def apply_rotary_pos_emb(t, freqs, config, cu_seqlens=None, mscale=1.0, cp_group=None):
        if cu_seqlens is None and mscale == 1.0 and not config.rotary_interleaved:
            return get_kernels().rotary(t, freqs)
        return upstream(t, freqs, config, cu_seqlens=cu_seqlens, mscale=mscale, cp_group=cp_group)

    attention.apply_rotary_pos_emb = apply_rotary_pos_emb
    _INSTALLED = True
