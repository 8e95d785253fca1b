"""ModelConfig <-> Hugging Face config (LlamaConfig, MixtralConfig, Grok1Config).

``to_hf_config`` refuses architectures the HF class cannot express (e.g. a soft-capped Llama);
``from_hf_config`` infers the family from ``model_type`` / ``architectures``. Only architecture
travels: training settings other than the router aux-loss coefficient stay on the moetrain side.
HF adds the router aux loss only when ``output_router_logits`` is true, so that flag and
``moe_aux_loss_coeff > 0`` map onto each other.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import LlamaConfig, MixtralConfig, PretrainedConfig

from moetrain.models.config import ModelConfig
from moetrain.models.grok1.hf_config import Grok1Config


def _default_multiplier(cfg: ModelConfig) -> float:
    return cfg.head_dim ** -0.5  # == the release's 0.08838834764831845 for 128 (1/math.sqrt is 2 ulp off)


def _require(cfg: ModelConfig, ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"model {cfg.name!r} ({cfg.hf_architecture or cfg.family}): {what}")


def _common(cfg: ModelConfig) -> dict[str, Any]:
    return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
                num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
                num_key_value_heads=cfg.num_query_groups, head_dim=cfg.head_dim,
                max_position_embeddings=cfg.seq_length, rms_norm_eps=cfg.norm_epsilon,
                tie_word_embeddings=not cfg.untie_embeddings_and_output_weights)


def _llama_family(cfg: ModelConfig) -> PretrainedConfig:
    _require(cfg, cfg.activation == "swiglu", "Llama/Mixtral use SwiGLU")
    _require(cfg, cfg.embedding_multiplier == 1.0 and cfg.output_multiplier == 1.0 and not cfg.sandwich_norm
             and cfg.attn_logit_softcapping is None, "Grok-1 numerics have no Llama/Mixtral HF equivalent")
    _require(cfg, cfg.attn_output_multiplier is None
             or math.isclose(cfg.attn_output_multiplier, _default_multiplier(cfg), rel_tol=1e-12),
             "Llama/Mixtral scale attention scores by 1/sqrt(head_dim)")
    kw = dict(_common(cfg), hidden_act="silu", rope_theta=cfg.rotary_base)
    if not cfg.is_moe:
        return LlamaConfig(architectures=["LlamaForCausalLM"], **kw)
    _require(cfg, not cfg.moe_router_pre_softmax, "Mixtral renormalises the top-k (moe_router_pre_softmax=False)")
    return MixtralConfig(architectures=["MixtralForCausalLM"], num_local_experts=cfg.num_experts,
                         num_experts_per_tok=cfg.moe_router_topk, router_aux_loss_coef=cfg.moe_aux_loss_coeff,
                         output_router_logits=cfg.moe_aux_loss_coeff > 0, **kw)


def _grok1(cfg: ModelConfig) -> Grok1Config:
    _require(cfg, cfg.is_moe and cfg.activation == "geglu" and cfg.sandwich_norm and cfg.moe_router_pre_softmax,
             "the Grok-1 HF layout is MoE with GeGLU experts, sandwich norms and a pre-softmax router")
    _require(cfg, cfg.attn_logit_softcapping is not None, "the Grok-1 HF model always soft-caps attention scores")
    return Grok1Config(
        architectures=["Grok1ModelForCausalLM"], **_common(cfg),
        attn_output_multiplier=cfg.attn_output_multiplier or _default_multiplier(cfg),
        max_attn_value=cfg.attn_logit_softcapping, embedding_multiplier_scale=cfg.embedding_multiplier,
        output_multiplier_scale=cfg.output_multiplier, rope_theta=cfg.rotary_base,
        gelu_approximate=cfg.gelu_approximate, num_experts=cfg.num_experts, num_experts_per_tok=cfg.moe_router_topk,
        router_aux_loss_coef=cfg.moe_aux_loss_coeff, output_router_logits=cfg.moe_aux_loss_coeff > 0,
    )


def to_hf_config(cfg: ModelConfig) -> PretrainedConfig:
    """The HF config for ``cfg.hf_architecture`` (or, when empty, the family's default class)."""
    arch = cfg.hf_architecture or ("Grok1ModelForCausalLM" if cfg.family == "grok1" else
                                   "MixtralForCausalLM" if cfg.is_moe else "LlamaForCausalLM")
    if arch == "Grok1ModelForCausalLM":
        return _grok1(cfg)
    if arch in ("LlamaForCausalLM", "MixtralForCausalLM"):
        _require(cfg, cfg.family == "llama", f"{arch} needs family 'llama'")
        _require(cfg, cfg.is_moe == (arch == "MixtralForCausalLM"), f"{arch} does not match num_experts")
        return _llama_family(cfg)
    raise ValueError(f"model {cfg.name!r}: no HF config for architecture {arch!r}")


def _rope_theta(d: dict) -> float:
    params = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if params.get("rope_type", "default") != "default":
        raise ValueError(f"from_hf_config: RoPE scaling {params.get('rope_type')!r} is not supported")
    return float(params.get("rope_theta", d.get("rope_theta", 10000.0)))


def from_hf_config(hf_cfg_dict: dict | PretrainedConfig, name: str = "from-hf") -> ModelConfig:
    """The ModelConfig of an HF config (dict or config object); the family is inferred."""
    d = hf_cfg_dict.to_dict() if isinstance(hf_cfg_dict, PretrainedConfig) else dict(hf_cfg_dict)
    model_type = d.get("model_type") or ""
    arch = (d.get("architectures") or [""])[0]
    is_grok = model_type == "grok-1" or arch.startswith("Grok1")
    if not is_grok and model_type not in ("llama", "mixtral") and arch not in ("LlamaForCausalLM",
                                                                              "MixtralForCausalLM"):
        raise ValueError(f"from_hf_config: unsupported model_type {model_type!r} / architecture {arch!r}")
    h, heads = d["hidden_size"], d["num_attention_heads"]
    head_dim = d.get("head_dim") or h // heads
    aux = float(d.get("router_aux_loss_coef", 0.0)) if d.get("output_router_logits") else 0.0
    common = dict(name=name, num_layers=d["num_hidden_layers"], hidden_size=h,
                  ffn_hidden_size=d["intermediate_size"], num_attention_heads=heads,
                  num_query_groups=d.get("num_key_value_heads") or heads, vocab_size=d["vocab_size"],
                  seq_length=d["max_position_embeddings"], norm_epsilon=d["rms_norm_eps"],
                  untie_embeddings_and_output_weights=not d.get("tie_word_embeddings", False))
    if is_grok:
        mult = d.get("attn_output_multiplier")
        if mult is not None and math.isclose(mult, head_dim ** -0.5, rel_tol=1e-12):
            mult = None  # the ModelConfig default (1/sqrt(head_dim))
        return ModelConfig(
            **common, family="grok1", kv_channels=head_dim, activation="geglu",
            gelu_approximate=d.get("gelu_approximate", "none"), num_experts=d["num_experts"],
            moe_router_topk=d["num_experts_per_tok"], moe_router_pre_softmax=True, moe_aux_loss_coeff=aux,
            rotary_base=float(d.get("rope_theta", 10000.0)), embedding_multiplier=d["embedding_multiplier_scale"],
            output_multiplier=d["output_multiplier_scale"], attn_logit_softcapping=d["max_attn_value"],
            attn_output_multiplier=mult, sandwich_norm=True, hf_architecture="Grok1ModelForCausalLM")
    if d.get("hidden_act", "silu") != "silu":
        raise ValueError(f"from_hf_config: hidden_act {d.get('hidden_act')!r} is not supported (SwiGLU only)")
    if d.get("attention_bias") or d.get("mlp_bias"):
        raise ValueError("from_hf_config: attention/MLP biases are not supported")
    kv = None if head_dim == h // heads else head_dim
    if model_type == "mixtral" or arch == "MixtralForCausalLM":
        return ModelConfig(**common, family="llama", kv_channels=kv, num_experts=d["num_local_experts"],
                           moe_router_topk=d["num_experts_per_tok"], moe_aux_loss_coeff=aux,
                           rotary_base=_rope_theta(d), hf_architecture="MixtralForCausalLM")
    return ModelConfig(**common, family="llama", kv_channels=kv, rotary_base=_rope_theta(d),
                       hf_architecture="LlamaForCausalLM")
