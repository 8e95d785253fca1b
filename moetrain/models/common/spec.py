"""megatron-core layer specs built from moetrain's modules (the spec provider for every family).

One decoder layer:
    input_layernorm (RMSNorm) -> SelfAttention(linear_qkv, CoreAttention, linear_proj) -> [post norm] -> +residual
    pre_mlp_layernorm (RMSNorm) -> MLP (dense) or MoELayer(router, grouped-GEMM experts) -> [post norm] -> +residual
Post norms exist only for sandwich-norm models (Grok-1). Parameter names are those of
megatron-core's local spec; the HF weight maps (``moetrain/models/*/weight_map.py``) rely on them.
"""

from __future__ import annotations

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.moe.moe_layer import MoELayer, MoESubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from moetrain.models.common.activations import GatedActivation
from moetrain.models.common.core_attention import CoreAttention
from moetrain.models.common.experts import GroupedGemmExperts
from moetrain.models.common.norms import RMSNorm
from moetrain.models.common.sandwich_layer import SandwichLayerSubmodules, SandwichTransformerLayer
from moetrain.models.config import ModelConfig

NORM = ModuleSpec(module=RMSNorm)


def attention_spec(cfg: ModelConfig) -> ModuleSpec:
    """Fused-QKV self-attention; ``softcap`` reaches CoreAttention (Grok-1: 30)."""
    return ModuleSpec(
        module=SelfAttention,
        params={"attn_mask_type": AttnMaskType.causal},
        submodules=SelfAttentionSubmodules(
            linear_qkv=ColumnParallelLinear,
            core_attention=ModuleSpec(module=CoreAttention, params={"softcap": cfg.attn_logit_softcapping}),
            linear_proj=RowParallelLinear,
            q_layernorm=IdentityOp,
            k_layernorm=IdentityOp,
        ),
    )


def mlp_spec(cfg: ModelConfig) -> ModuleSpec:
    """Gated MLP, or an MoE layer whose experts are gated MLPs (expert-tensor-parallel size 1)."""
    glu = ModuleSpec(module=GatedActivation,
                     params={"activation": cfg.activation, "gelu_approximate": cfg.gelu_approximate})
    gated = MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear, activation_func=glu)
    if not cfg.is_moe:
        return ModuleSpec(module=MLP, submodules=gated)
    experts = ModuleSpec(module=GroupedGemmExperts, submodules=gated)
    return ModuleSpec(module=MoELayer, submodules=MoESubmodules(experts=experts))


def layer_spec(cfg: ModelConfig) -> ModuleSpec:
    common = dict(
        input_layernorm=NORM,
        self_attention=attention_spec(cfg),
        self_attn_bda=get_bias_dropout_add,
        pre_mlp_layernorm=NORM,
        mlp=mlp_spec(cfg),
        mlp_bda=get_bias_dropout_add,
    )
    if cfg.sandwich_norm:
        return ModuleSpec(
            module=SandwichTransformerLayer,
            submodules=SandwichLayerSubmodules(post_self_attn_layernorm=NORM, post_mlp_layernorm=NORM, **common),
        )
    return ModuleSpec(module=TransformerLayer, submodules=TransformerLayerSubmodules(**common))


def block_spec(cfg: ModelConfig, num_local_layers: int) -> TransformerBlockSubmodules:
    """The decoder block of one pipeline stage, with moetrain's RMSNorm as the final norm
    (megatron-core's default final norm refuses sequence parallelism)."""
    return TransformerBlockSubmodules(layer_specs=[layer_spec(cfg)] * num_local_layers, layer_norm=NORM)
