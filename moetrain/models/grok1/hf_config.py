"""Hugging Face configuration for Grok-1, with hpcai-tech/grok-1's config.json keys.

Defaults are the released 314B model. Two keys are additions (absent from the HF release, whose
values they default to): ``gelu_approximate`` ("none" = erf GELU of the HF port, "tanh" = xAI's JAX
original) and ``rope_theta`` (the port hard-codes 10000). ``head_dim`` is hidden_size //
num_attention_heads unless given.
"""

from __future__ import annotations

from transformers import PretrainedConfig


class Grok1Config(PretrainedConfig):
    model_type = "grok-1"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 131072,
        hidden_size: int = 6144,
        intermediate_size: int = 32768,
        num_hidden_layers: int = 64,
        num_attention_heads: int = 48,
        num_key_value_heads: int | None = 8,
        head_dim: int | None = None,
        attn_output_multiplier: float = 0.08838834764831845,
        max_attn_value: float = 30.0,
        max_position_embeddings: int = 8192,
        embedding_multiplier_scale: float = 78.38367176906169,
        output_multiplier_scale: float = 0.5773502691896257,
        rms_norm_eps: float = 1e-5,
        rope_theta: float = 10000.0,
        gelu_approximate: str = "none",
        use_cache: bool = False,
        pad_token_id: int | None = 0,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        tie_word_embeddings: bool = True,
        num_experts_per_tok: int = 2,
        num_experts: int = 8,
        output_router_logits: bool = False,
        router_aux_loss_coef: float = 0.001,
        initializer_range: float = 0.02,
        **kwargs,
    ) -> None:
        if gelu_approximate not in ("none", "tanh"):
            raise ValueError(f"Grok1Config: gelu_approximate must be 'none' or 'tanh', got {gelu_approximate!r}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.attn_output_multiplier = attn_output_multiplier
        self.max_attn_value = max_attn_value
        self.max_position_embeddings = max_position_embeddings
        self.embedding_multiplier_scale = embedding_multiplier_scale
        self.output_multiplier_scale = output_multiplier_scale
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.gelu_approximate = gelu_approximate
        self.use_cache = use_cache
        self.num_experts_per_tok = num_experts_per_tok
        self.num_experts = num_experts
        self.output_router_logits = output_router_logits
        self.router_aux_loss_coef = router_aux_loss_coef
        self.initializer_range = initializer_range
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )


# ---------------------------------------------------------------- ModelConfig <-> Grok1Config
def to_hf(cfg):
    """The Grok1Config of a grok1-family ModelConfig."""
    from moetrain.models.hf_config import common_hf_fields, default_score_scale, require

    arch = cfg.hf_architecture or "Grok1ModelForCausalLM"
    require(cfg, arch == "Grok1ModelForCausalLM", f"no HF config for architecture {arch!r} in the grok1 family")
    require(cfg, cfg.is_moe and cfg.activation == "geglu" and cfg.sandwich_norm and cfg.moe_router_pre_softmax,
            "the Grok-1 HF layout is MoE with GeGLU experts, sandwich norms and a pre-softmax router")
    require(cfg, cfg.attn_logit_softcapping is not None, "the Grok-1 HF model always soft-caps attention scores")
    return Grok1Config(
        architectures=["Grok1ModelForCausalLM"], **common_hf_fields(cfg),
        attn_output_multiplier=cfg.attn_output_multiplier or default_score_scale(cfg),
        max_attn_value=cfg.attn_logit_softcapping, embedding_multiplier_scale=cfg.embedding_multiplier,
        output_multiplier_scale=cfg.output_multiplier, rope_theta=cfg.rotary_base,
        gelu_approximate=cfg.gelu_approximate, num_experts=cfg.num_experts, num_experts_per_tok=cfg.moe_router_topk,
        router_aux_loss_coef=cfg.moe_aux_loss_coeff, output_router_logits=cfg.moe_aux_loss_coeff > 0,
    )


def from_hf(d: dict, name: str):
    """The ModelConfig of a Grok-1 HF config dict, or None for another model type."""
    import math

    from moetrain.models.config import ModelConfig
    from moetrain.models.hf_config import common_model_fields, head_dim_of, router_aux_coeff

    arch = (d.get("architectures") or [""])[0]
    if d.get("model_type") != "grok-1" and not arch.startswith("Grok1"):
        return None
    head_dim = head_dim_of(d)
    mult = d.get("attn_output_multiplier")
    if mult is not None and math.isclose(mult, head_dim ** -0.5, rel_tol=1e-12):
        mult = None  # the ModelConfig default (1/sqrt(head_dim))
    return ModelConfig(
        **common_model_fields(d, name), family="grok1", kv_channels=head_dim, activation="geglu",
        gelu_approximate=d.get("gelu_approximate", "none"), num_experts=d["num_experts"],
        moe_router_topk=d["num_experts_per_tok"], moe_router_pre_softmax=True, moe_aux_loss_coeff=router_aux_coeff(d),
        rotary_base=float(d.get("rope_theta", 10000.0)), embedding_multiplier=d["embedding_multiplier_scale"],
        output_multiplier=d["output_multiplier_scale"], attn_logit_softcapping=d["max_attn_value"],
        attn_output_multiplier=mult, sandwich_norm=True, hf_architecture="Grok1ModelForCausalLM")
