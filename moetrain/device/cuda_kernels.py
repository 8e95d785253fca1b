"""CUDA kernel variants. Each falls back to the torch reference semantics exactly."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moetrain.kernels.attention_flex import attention_flex
from moetrain.kernels.table import KernelTable, with_variant


def rms_norm_torch_fused(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # torch's fused rms_norm kernel; fp32 in and out keeps Grok-1's fp32 normalisation.
    return F.rms_norm(x.float(), (x.shape[-1],), weight.float(), eps).to(x.dtype)


def with_torch_fused(table: KernelTable) -> KernelTable:
    return with_variant(table, "rms_norm", "torch-fused", rms_norm_torch_fused)


def attention_flash(q, k, v, scale, softcap=None, causal=True, mask=None, dropout_p=0.0):
    """flash-attn 2 (supports GQA and soft-capping natively). Layout in: [b, heads, s, d]."""
    from flash_attn import flash_attn_func

    if mask is not None or q.dtype not in (torch.float16, torch.bfloat16):
        # flash-attn takes neither a dense mask (packed samples) nor fp32: compiled flex does both
        # without materialised scores (it falls back to the reference where it cannot, e.g. dropout).
        return attention_flex(q, k, v, scale, softcap, causal, mask, dropout_p)
    out = flash_attn_func(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p,
        softmax_scale=scale, causal=causal, softcap=0.0 if softcap is None else softcap,
    )
    return out.transpose(1, 2)


def with_flash_attention(table: KernelTable) -> KernelTable:
    """flash-attn for both attentions: it soft-caps natively."""
    table = with_variant(table, "attention", "flash-attn", attention_flash)
    return with_variant(table, "softcap_attention", "flash-attn", attention_flash)


def with_flex_softcap_attention(table: KernelTable) -> KernelTable:
    """Compiled flex_attention for soft-capped attention where flash-attn is not installed: exact
    cap, no [b, h, s, s] scores (the reference's). Uncapped attention stays on SDPA."""
    return with_variant(table, "softcap_attention", "flex", attention_flex)
