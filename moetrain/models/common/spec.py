"""megatron-core layer-spec building blocks from moetrain's modules, shared by every family.

One decoder layer:
    input_layernorm (RMSNorm) -> SelfAttention(linear_qkv, CoreAttention, linear_proj) -> +residual
    pre_mlp_layernorm (RMSNorm) -> MLP (dense) or MoELayer(router, GroupedExperts) -> +residual
A family's ``spec.py`` composes these (Grok-1 adds its post norms and the soft-cap:
``moetrain/models/grok1/spec.py``). Parameter names are those of megatron-core's local spec; the HF
weight maps (``moetrain/models/*/weight_map.py``) rely on them.
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
from moetrain.models.common.experts import GroupedExperts
from moetrain.models.common.norms import RMSNorm
from moetrain.models.config import ModelConfig

NORM = ModuleSpec(module=RMSNorm)


def attention_spec(softcap: float | None) -> ModuleSpec:
    """Fused-QKV self-attention; ``softcap`` reaches CoreAttention (None: no cap)."""
    return ModuleSpec(
        module=SelfAttention,
        params={"attn_mask_type": AttnMaskType.causal},
        submodules=SelfAttentionSubmodules(
            linear_qkv=ColumnParallelLinear,
            core_attention=ModuleSpec(module=CoreAttention, params={"softcap": softcap}),
            linear_proj=RowParallelLinear,
            q_layernorm=IdentityOp,
            k_layernorm=IdentityOp,
        ),
    )


def mlp_spec(cfg: ModelConfig) -> ModuleSpec:
    """Gated MLP, or an MoE layer whose experts are gated MLPs."""
    glu = ModuleSpec(module=GatedActivation,
                     params={"activation": cfg.activation, "gelu_approximate": cfg.gelu_approximate})
    gated = MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear, activation_func=glu)
    if not cfg.is_moe:
        return ModuleSpec(module=MLP, submodules=gated)
    experts = ModuleSpec(module=GroupedExperts, submodules=gated)
    return ModuleSpec(module=MoELayer, submodules=MoESubmodules(experts=experts))


def layer_submodules(cfg: ModelConfig) -> dict:
    """The submodules every family's layer has (pre-norms, attention, MLP / MoE, residual adds)."""
    return dict(
        input_layernorm=NORM,
        self_attention=attention_spec(cfg.attn_logit_softcapping),
        self_attn_bda=get_bias_dropout_add,
        pre_mlp_layernorm=NORM,
        mlp=mlp_spec(cfg),
        mlp_bda=get_bias_dropout_add,
    )


def plain_layer_spec(cfg: ModelConfig) -> ModuleSpec:
    """megatron-core's TransformerLayer with moetrain's modules (Llama, Mixtral)."""
    return ModuleSpec(module=TransformerLayer, submodules=TransformerLayerSubmodules(**layer_submodules(cfg)))


def block_spec(layer: ModuleSpec, num_local_layers: int) -> TransformerBlockSubmodules:
    """The decoder block of one pipeline stage, with moetrain's RMSNorm as the final norm
    (megatron-core's default final norm refuses sequence parallelism)."""
    return TransformerBlockSubmodules(layer_specs=[layer] * num_local_layers, layer_norm=NORM)
