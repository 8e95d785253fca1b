"""Causal self-attention with grouped KV heads and optional logit soft-capping (Grok-1).

Layout: q [b, heads, s, d]; k, v [b, kv_heads, s, d] -> [b, heads, s, d].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _expand_kv(t: torch.Tensor, heads: int) -> torch.Tensor:
    groups = t.shape[1]
    return t if groups == heads else t.repeat_interleave(heads // groups, dim=1)


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    softcap: float | None = None,
    causal: bool = True,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Scores = q·kᵀ * scale, then ``softcap * tanh(scores / softcap)``, then mask, softmax in fp32.

    ``mask`` is boolean, True where attention is *not* allowed (megatron-core's convention),
    broadcastable to [b, heads, sq, sk].
    """
    heads, sq, sk = q.shape[1], q.shape[2], k.shape[2]
    k, v = _expand_kv(k, heads), _expand_kv(v, heads)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # [b, heads, sq, sk]
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if causal:
        causal_mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).triu(sk - sq + 1)
        scores = scores.masked_fill(causal_mask, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v)


def attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    softcap: float | None = None,
    causal: bool = True,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """torch's scaled_dot_product_attention (flash / memory-efficient kernels where the device has them).

    SDPA cannot soft-cap logits: with ``softcap`` set this falls back to the reference (see
    ``KernelTable.attention`` — the table logs that once).
    """
    if softcap is not None:
        return attention_reference(q, k, v, scale, softcap, causal, mask, dropout_p)
    attn_mask = None if mask is None else ~mask
    heads = q.shape[1]
    k, v = _expand_kv(k, heads), _expand_kv(v, heads)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=causal and mask is None, scale=scale
    )
