"""Grok-1's decoder layer: the shared attention (with the soft-cap) and MoE, plus sandwich norms.

- attention: scores scaled by ``attn_output_multiplier``, then ``30 * tanh(scores / 30)``
  (``attn_logit_softcapping``), mask, fp32 softmax: CoreAttention with ``softcap``
  (``moetrain/models/common/core_attention.py`` -> ``moetrain/kernels/attention.py``);
- four RMSNorms per layer: pre_attn -> attention -> post_attn -> +residual, pre_moe -> MoE ->
  post_moe -> +residual (``sandwich_layer.py``);
- the embedding / logit multipliers are hooks on the built model (``multipliers.py``).
"""

from __future__ import annotations

from megatron.core.transformer.spec_utils import ModuleSpec

from moetrain.models.common.spec import NORM, layer_submodules, plain_layer_spec
from moetrain.models.config import ModelConfig
from moetrain.models.grok1.sandwich_layer import SandwichLayerSubmodules, SandwichTransformerLayer


def layer_spec(cfg: ModelConfig) -> ModuleSpec:
    if not cfg.sandwich_norm:
        return plain_layer_spec(cfg)
    return ModuleSpec(
        module=SandwichTransformerLayer,
        submodules=SandwichLayerSubmodules(post_self_attn_layernorm=NORM, post_mlp_layernorm=NORM,
                                           **layer_submodules(cfg)),
    )
