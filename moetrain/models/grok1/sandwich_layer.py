"""A transformer layer with "sandwich" norms: a second RMSNorm after attention and after the MLP.

Grok-1 normalises each sub-block's *output* before the residual add:
    h = h + post_attn_norm(attn(pre_attn_norm(h)))
    h = h + post_moe_norm(moe(pre_moe_norm(h)))
megatron-core's TransformerLayer has the pre-norms (input_layernorm, pre_mlp_layernorm); this
subclass adds ``post_self_attn_layernorm`` and ``post_mlp_layernorm`` and applies them inside the
bias-dropout-add step, so every other part of the upstream layer (recompute, SP, MoE) is reused.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules


@dataclass
class SandwichLayerSubmodules(TransformerLayerSubmodules):
    post_self_attn_layernorm: ModuleSpec | type = IdentityOp
    post_mlp_layernorm: ModuleSpec | type = IdentityOp


class _NormBeforeBiasDropoutAdd:
    """Wraps a bias-dropout-add factory: normalises the sub-block output, then adds the residual.

    A plain object (not an nn.Module) so the norm is registered once, under its layer attribute.
    """

    def __init__(self, bda_factory, norm) -> None:
        self.bda_factory = bda_factory
        self.norm = norm

    def __call__(self, training: bool, fused: bool):
        bda = self.bda_factory(training, fused)

        def norm_then_bda(output_with_bias, residual, prob):
            output, bias = output_with_bias
            if bias is not None:
                output = output + bias
            return bda((self.norm(output), None), residual, prob)

        return norm_then_bda


class SandwichTransformerLayer(TransformerLayer):
    def __init__(self, config, submodules: SandwichLayerSubmodules, **kwargs) -> None:
        super().__init__(config=config, submodules=submodules, **kwargs)
        hidden, eps = config.hidden_size, config.layernorm_epsilon
        self.post_self_attn_layernorm = build_module(
            submodules.post_self_attn_layernorm, config=config, hidden_size=hidden, eps=eps)
        self.post_mlp_layernorm = build_module(
            submodules.post_mlp_layernorm, config=config, hidden_size=hidden, eps=eps)
        self.self_attn_bda = _NormBeforeBiasDropoutAdd(self.self_attn_bda, self.post_self_attn_layernorm)
        self.mlp_bda = _NormBeforeBiasDropoutAdd(self.mlp_bda, self.post_mlp_layernorm)
