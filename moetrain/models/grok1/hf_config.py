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
