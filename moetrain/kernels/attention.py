"""Causal self-attention with grouped KV heads and optional logit soft-capping (Grok-1).

Layout: q [b, heads, s, d]; k, v [b, kv_heads, s, d] -> [b, heads, s, d].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    b, heads, sq, d = q.shape
    groups, sk = k.shape[1], k.shape[2]
    # Grouped KV heads by broadcasting, not copying: head h reads group h // (heads / groups).
    qg = q.reshape(b, groups, heads // groups, sq, d)  # [b, g, r, sq, d]
    scores = torch.matmul(qg, k.unsqueeze(2).transpose(-1, -2)).float() * scale  # [b, g, r, sq, sk]
    scores = scores.reshape(b, heads, sq, sk)
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
    out = torch.matmul(probs.reshape(b, groups, heads // groups, sq, sk), v.unsqueeze(2))  # [b, g, r, sq, d]
    return out.reshape(b, heads, sq, v.shape[-1])


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

    SDPA cannot soft-cap logits: with ``softcap`` set this runs the reference (the kernel table routes
    soft-capped models to its ``softcap_attention`` entry, so this is only a guard for direct calls).
    """
    if softcap is not None:
        return attention_reference(q, k, v, scale, softcap, causal, mask, dropout_p)
    sq, sk = q.shape[2], k.shape[2]
    if causal and mask is None and sq != sk:
        # SDPA's is_causal aligns the query block top-left; the reference (and a KV-cached query
        # block) aligns it bottom-right: query i sees keys up to i + sk - sq.
        if sq == 1:
            causal = False  # one query after every key (a decode step) sees them all
        else:
            mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).triu(sk - sq + 1)
    attn_mask = None if mask is None else ~mask
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=causal and mask is None, scale=scale,
        enable_gqa=k.shape[1] != q.shape[1],  # grouped KV heads without repeating them
    )
