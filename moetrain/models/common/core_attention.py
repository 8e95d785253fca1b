"""Core attention (scores -> soft-cap -> mask -> softmax -> values) for megatron-core specs.

Replaces megatron-core's ``DotProductAttention`` so that the kernel table chooses the kernel and
so that Grok-1's logit soft-capping holds on every path (``KernelTable.attention_for`` falls back
to the torch reference when a fused kernel cannot soft-cap, and says so once).

Generation sets ``kv_cache`` (``moetrain.inference.kv_cache``): keys and values arrive here after
rotary embedding, so caching them here serves every family and keeps the soft-cap in decode too.
"""

from __future__ import annotations

import math

from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule

from moetrain.kernels import get_kernels


class CoreAttention(MegatronModule):
    """Inputs as megatron-core's SelfAttention passes them:
    query [sq, b, heads/tp, hd], key/value [sk, b, groups/tp, hd] -> context [sq, b, heads/tp * hd].

    ``softcap`` comes from the spec's params (Grok-1: 30.0); the score scale from
    ``config.softmax_scale`` (Grok-1's attn_output_multiplier) or 1/sqrt(head_dim).
    """

    def __init__(self, config, layer_number: int, attn_mask_type: AttnMaskType, attention_type: str,
                 attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type: str | None = None, pg_collection=None, softcap: float | None = None) -> None:
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("moetrain's CoreAttention does not support context parallelism")
        del layer_number, attention_type, cp_comm_type, pg_collection
        self.attn_mask_type = attn_mask_type
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)
        self.softcap = softcap
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.kv_cache = None  # a LayerKVCache while generating

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("packed sequences and attention bias are not supported by CoreAttention")
        if self.kv_cache is not None:
            # The prefix's keys / values plus these; the generator's mask covers all of them.
            key, value = self.kv_cache.update(key, value)
        mask_type = attn_mask_type or self.attn_mask_type
        causal = mask_type == AttnMaskType.causal and attention_mask is None
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        attend = get_kernels().attention_for(self.softcap)
        out = attend(q, k, v, self.softmax_scale, self.softcap, causal, attention_mask,
                     self.dropout_p if self.training else 0.0)
        sq, b = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(sq, b, -1)  # [sq, b, heads * hd]
