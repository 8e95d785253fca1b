"""Soft-capped attention (Grok-1) with ``torch.nn.attention.flex_attention``: no [b, h, sq, sk] scores.

Same signature and semantics as ``attention_reference``. flex applies ``scale`` to q·kᵀ *before*
``score_mod`` (torch 2.13, ``_math_attention_inner`` and the fused kernels alike), so the score_mod
is exactly the cap ``softcap * tanh(score / softcap)``; masks become a ``BlockMask`` whose
fully-masked tiles the fused kernel skips. Unlike the reference, a fully masked row gives 0, not NaN
(no moetrain mask has one: padding attends to earlier padding).

Only the compiled flex is fused; uncompiled flex runs torch's math fallback, which materialises the
scores like the reference. It compiles once per shape: training has one; past 8 shapes in a process
(generation prefills of many prompt lengths) dynamo stops compiling and flex runs uncompiled, still
exact. Where the reference runs instead:
- ``dropout_p > 0``: flex has no attention dropout (Grok-1 uses none).
- compiled and ``sq != sk``: a KV-cached decode step; its sk grows every token, and each new shape
  would recompile the static-shape kernel, while its scores ([b, h, 1, sk]) are small anyway.
- inputs that require grad on CPU: torch 2.13 refuses them ("FlexAttention does not support
  backward on CPU"). On CPU flex is therefore forward-only and uncompiled by default: compiling
  takes 25-30 s per shape on 2 cores (docs/benchmarks.md), so the CPU table does not offer it.
"""

from __future__ import annotations

import functools
import warnings
import weakref

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from moetrain.kernels.attention import attention_reference

_compiled_flex = None  # torch.compile(flex_attention), created on first use


def _flex_fn(compiled: bool):
    global _compiled_flex
    if not compiled:
        return flex_attention
    if _compiled_flex is None:
        # dynamic=False: one kernel per shape, specialised like flash-attn's; training has one shape.
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def _flex_can_differentiate(device: torch.device) -> bool:
    return device.type != "cpu"  # torch's CPU flex kernel is forward-only (see the module docstring)


# score_mod / mask_mod functions are cached per constant: the compiled flex guards on the function
# object, so a fresh closure per call would recompile.
@functools.cache
def _softcap_score_mod(softcap: float):
    def softcap_score(score, b, h, q_idx, kv_idx):
        return softcap * torch.tanh(score / softcap)

    return softcap_score


@functools.cache
def _causal_mask_mod(offset: int):
    # Bottom-right aligned: query i sees keys up to i + sk - sq (a KV-cached query block).
    def causal(b, h, q_idx, kv_idx):
        return q_idx + offset >= kv_idx

    return causal


@functools.lru_cache(maxsize=16)  # bounded: generation prefills see a few prompt lengths
def _causal_block_mask(sq: int, sk: int, device: torch.device) -> BlockMask:
    return create_block_mask(_causal_mask_mod(sk - sq), None, None, sq, sk, device=device)


def _dense_mask_mod(mask: torch.Tensor, per_batch: bool, per_head: bool, offset: int | None):
    # One code object for every dense mask: the captured tensor is a kernel input, so a new mask
    # of the same shape (the next batch's packing) does not recompile.
    def allowed(b, h, q_idx, kv_idx):
        keep = ~mask[b if per_batch else 0, h if per_head else 0, q_idx, kv_idx]
        return keep if offset is None else keep & (q_idx + offset >= kv_idx)

    return allowed


_last_dense: tuple | None = None  # (weakref to the mask, its _version, key, BlockMask)


def _dense_block_mask(mask: torch.Tensor, heads: int, sq: int, sk: int, causal: bool) -> BlockMask:
    """A BlockMask for megatron's boolean mask (True = not allowed), broadcastable to [b, heads, sq, sk].

    Packed samples bring a new mask per batch, but every layer of a step passes the same tensor:
    the last one is kept, keyed by identity."""
    global _last_dense
    key = (tuple(mask.shape), heads, sq, sk, causal)
    if _last_dense is not None:
        ref, version, last_key, block_mask = _last_dense
        if ref() is mask and version == mask._version and last_key == key:
            return block_mask
    dense = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    per_batch, per_head = dense.shape[0] != 1, dense.shape[1] != 1
    dense = dense.expand(dense.shape[0], dense.shape[1], sq, sk)
    mask_mod = _dense_mask_mod(dense, per_batch, per_head, sk - sq if causal else None)
    block_mask = create_block_mask(mask_mod, dense.shape[0] if per_batch else None, heads if per_head else None,
                                   sq, sk, device=mask.device)
    _last_dense = (weakref.ref(mask), mask._version, key, block_mask)
    return block_mask


def attention_flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    softcap: float | None = None,
    causal: bool = True,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    *,
    compiled: bool | None = None,
) -> torch.Tensor:
    """q [b, heads, sq, d]; k, v [b, kv_heads, sk, d] -> [b, heads, sq, d] in q's dtype (fp32 softmax).

    ``compiled``: None = compiled except on CPU (see the module docstring)."""
    compiled = q.device.type != "cpu" if compiled is None else compiled
    sq, sk = q.shape[2], k.shape[2]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if (dropout_p > 0.0 or (compiled and sq != sk)
            or (needs_grad and not _flex_can_differentiate(q.device))):
        return attention_reference(q, k, v, scale, softcap, causal, mask, dropout_p)
    if mask is not None:
        block_mask = _dense_block_mask(mask, q.shape[1], sq, sk, causal)
    else:
        block_mask = _causal_block_mask(sq, sk, q.device) if causal else None
    score_mod = None if softcap is None else _softcap_score_mod(float(softcap))
    with warnings.catch_warnings():
        # Uncompiled on purpose (CPU, tests): torch warns that this path materialises the scores.
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return _flex_fn(compiled)(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                                  enable_gqa=q.shape[1] != k.shape[1])
