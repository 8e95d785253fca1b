"""ModelConfig <-> Hugging Face config, dispatched to the model's family.

Each family's ``hf_config.py`` maps its HF classes (LlamaConfig / MixtralConfig, Grok1Config);
``to_hf_config`` refuses architectures the HF class cannot express (e.g. a soft-capped Llama);
``from_hf_config`` asks every registered family whether the dict is one of its own. Only
architecture travels: training settings other than the router aux-loss coefficient stay on the
moetrain side. HF adds the router aux loss only when ``output_router_logits`` is true, so that flag
and ``moe_aux_loss_coeff > 0`` map onto each other. The helpers below are shared by the families.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from moetrain.models.config import ModelConfig


def default_score_scale(cfg: ModelConfig) -> float:
    return cfg.head_dim ** -0.5  # == the release's 0.08838834764831845 for 128 (1/math.sqrt is 2 ulp off)


def require(cfg: ModelConfig, ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"model {cfg.name!r} ({cfg.hf_architecture or cfg.family}): {what}")


def common_hf_fields(cfg: ModelConfig) -> dict[str, Any]:
    return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
                num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
                num_key_value_heads=cfg.num_query_groups, head_dim=cfg.head_dim,
                max_position_embeddings=cfg.seq_length, rms_norm_eps=cfg.norm_epsilon,
                tie_word_embeddings=not cfg.untie_embeddings_and_output_weights)


def common_model_fields(d: dict, name: str) -> dict[str, Any]:
    """ModelConfig fields every family reads the same way from an HF config dict."""
    h, heads = d["hidden_size"], d["num_attention_heads"]
    return dict(name=name, num_layers=d["num_hidden_layers"], hidden_size=h,
                ffn_hidden_size=d["intermediate_size"], num_attention_heads=heads,
                num_query_groups=d.get("num_key_value_heads") or heads, vocab_size=d["vocab_size"],
                seq_length=d["max_position_embeddings"], norm_epsilon=d["rms_norm_eps"],
                untie_embeddings_and_output_weights=not d.get("tie_word_embeddings", False))


def head_dim_of(d: dict) -> int:
    return d.get("head_dim") or d["hidden_size"] // d["num_attention_heads"]


def router_aux_coeff(d: dict) -> float:
    return float(d.get("router_aux_loss_coef", 0.0)) if d.get("output_router_logits") else 0.0


def to_hf_config(cfg: ModelConfig) -> PretrainedConfig:
    """The HF config for ``cfg.hf_architecture`` (or, when empty, the family's default class)."""
    from moetrain.models.registry import family_of

    return family_of(cfg).to_hf_config(cfg)


def from_hf_config(hf_cfg_dict: dict | PretrainedConfig, name: str = "from-hf") -> ModelConfig:
    """The ModelConfig of an HF config (dict or config object); the family is inferred."""
    from moetrain.models.registry import FAMILIES

    d = hf_cfg_dict.to_dict() if isinstance(hf_cfg_dict, PretrainedConfig) else dict(hf_cfg_dict)
    for family in FAMILIES.values():
        cfg = family.from_hf_config(d, name)
        if cfg is not None:
            return cfg
    arch = (d.get("architectures") or [""])[0]
    raise ValueError(f"from_hf_config: unsupported model_type {d.get('model_type') or ''!r} / architecture {arch!r}")
