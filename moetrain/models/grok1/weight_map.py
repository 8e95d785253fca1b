"""HF (hpcai-tech/grok-1) <-> megatron-core weight map for Grok-1.

Sandwich norms: pre_attn_norm -> input_layernorm, post_attn_norm -> post_self_attn_layernorm,
pre_moe_norm -> pre_mlp_layernorm, post_moe_norm -> post_mlp_layernorm (HF ``scale`` = mcore
``weight``). Experts: ``linear`` is the GELU branch (first half of fc1), ``linear_v`` the linear
branch, ``linear_1`` the down projection (fc2).
"""

from __future__ import annotations

from moetrain.models.common.weight_map import (
    ModelMap,
    ShardLayout,
    TensorRule,
    WeightMapError,
    attention_rules,
    global_rules,
    moe_rules,
    norm_rule,
)

_L = "model.layers.{layer}."
_E = _L + "moe_block.experts.{expert}."


def grok1_rules(cfg, layout: ShardLayout) -> list[TensorRule]:
    if not cfg.is_moe:
        raise WeightMapError(f"model {cfg.name!r}: the Grok-1 HF layout is MoE-only (num_experts is unset)")
    rules = global_rules(cfg, layout, "model.embed_tokens.weight", "model.norm.scale", "lm_head.weight")
    rules += attention_rules(*(_L + f"attn.{p}_proj.weight" for p in "qkvo"))
    rules += [norm_rule("input_layernorm", _L + "pre_attn_norm.scale"),
              norm_rule("post_self_attn_layernorm", _L + "post_attn_norm.scale"),
              norm_rule("pre_mlp_layernorm", _L + "pre_moe_norm.scale"),
              norm_rule("post_mlp_layernorm", _L + "post_moe_norm.scale")]
    rules += moe_rules(_L + "moe_block.gate.weight", _E + "linear.weight", _E + "linear_v.weight",
                       _E + "linear_1.weight")
    return rules


GROK1_MAP = ModelMap(grok1_rules)
