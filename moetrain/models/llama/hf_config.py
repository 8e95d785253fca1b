"""ModelConfig <-> transformers' LlamaConfig / MixtralConfig (the llama family)."""

from __future__ import annotations

import math

from transformers import LlamaConfig, MixtralConfig, PretrainedConfig

from moetrain.models.config import ModelConfig
from moetrain.models.hf_config import (
    common_hf_fields,
    common_model_fields,
    default_score_scale,
    head_dim_of,
    require,
    router_aux_coeff,
)

ARCHITECTURES = ("LlamaForCausalLM", "MixtralForCausalLM")


def to_hf(cfg: ModelConfig) -> PretrainedConfig:
    arch = cfg.hf_architecture or ("MixtralForCausalLM" if cfg.is_moe else "LlamaForCausalLM")
    if arch not in ARCHITECTURES:
        raise ValueError(f"model {cfg.name!r}: no HF config for architecture {arch!r}")
    require(cfg, cfg.is_moe == (arch == "MixtralForCausalLM"), f"{arch} does not match num_experts")
    require(cfg, cfg.activation == "swiglu", "Llama/Mixtral use SwiGLU")
    require(cfg, cfg.embedding_multiplier == 1.0 and cfg.output_multiplier == 1.0 and not cfg.sandwich_norm
            and cfg.attn_logit_softcapping is None, "Grok-1 numerics have no Llama/Mixtral HF equivalent")
    require(cfg, cfg.attn_output_multiplier is None
            or math.isclose(cfg.attn_output_multiplier, default_score_scale(cfg), rel_tol=1e-12),
            "Llama/Mixtral scale attention scores by 1/sqrt(head_dim)")
    kw = dict(common_hf_fields(cfg), hidden_act="silu", rope_theta=cfg.rotary_base)
    if not cfg.is_moe:
        return LlamaConfig(architectures=["LlamaForCausalLM"], **kw)
    require(cfg, not cfg.moe_router_pre_softmax, "Mixtral renormalises the top-k (moe_router_pre_softmax=False)")
    return MixtralConfig(architectures=["MixtralForCausalLM"], num_local_experts=cfg.num_experts,
                         num_experts_per_tok=cfg.moe_router_topk, router_aux_loss_coef=cfg.moe_aux_loss_coeff,
                         output_router_logits=cfg.moe_aux_loss_coeff > 0, **kw)


def _rope_theta(d: dict) -> float:
    params = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if params.get("rope_type", "default") != "default":
        raise ValueError(f"from_hf_config: RoPE scaling {params.get('rope_type')!r} is not supported")
    return float(params.get("rope_theta", d.get("rope_theta", 10000.0)))


def from_hf(d: dict, name: str) -> ModelConfig | None:
    """The ModelConfig of a Llama / Mixtral HF config dict, or None for another model type."""
    model_type = d.get("model_type") or ""
    arch = (d.get("architectures") or [""])[0]
    if model_type not in ("llama", "mixtral") and arch not in ARCHITECTURES:
        return None
    if d.get("hidden_act", "silu") != "silu":
        raise ValueError(f"from_hf_config: hidden_act {d.get('hidden_act')!r} is not supported (SwiGLU only)")
    if d.get("attention_bias") or d.get("mlp_bias"):
        raise ValueError("from_hf_config: attention/MLP biases are not supported")
    head_dim = head_dim_of(d)
    kv = None if head_dim == d["hidden_size"] // d["num_attention_heads"] else head_dim
    common = common_model_fields(d, name)
    if model_type == "mixtral" or arch == "MixtralForCausalLM":
        return ModelConfig(**common, family="llama", kv_channels=kv, num_experts=d["num_local_experts"],
                           moe_router_topk=d["num_experts_per_tok"], moe_aux_loss_coeff=router_aux_coeff(d),
                           rotary_base=_rope_theta(d), hf_architecture="MixtralForCausalLM")
    return ModelConfig(**common, family="llama", kv_channels=kv, rotary_base=_rope_theta(d),
                       hf_architecture="LlamaForCausalLM")
