"""The architecture of one model, independent of how it is parallelised or trained."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ACTIVATIONS = ("swiglu", "geglu")


@dataclass
class ModelConfig:
    """Architecture of a decoder-only transformer (dense or MoE).

    ``family`` names the model family (a folder of ``moetrain/models/``, see ``registry.py``) that
    builds it: ``llama`` (Llama and, with experts, Mixtral) or ``grok1``.
    Field names follow Megatron-LM's flags (``--num-query-groups`` is the KV head count).
    """

    name: str
    family: str
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    vocab_size: int
    seq_length: int
    kv_channels: int | None = None  # head dim; hidden_size // heads when None
    # --- MoE (num_experts None or 0 means dense) ---
    num_experts: int | None = None
    moe_router_topk: int = 2
    # Grok-1: softmax over all experts, then top-k, no renormalisation.
    # Mixtral: top-k, then softmax over the k logits (== renormalised).
    moe_router_pre_softmax: bool = False
    moe_aux_loss_coeff: float = 0.0
    moe_z_loss_coeff: float | None = None
    moe_expert_capacity_factor: float | None = None
    # --- numerics ---
    activation: str = "swiglu"
    gelu_approximate: str = "none"  # "none" (erf, HF port) or "tanh" (xAI JAX original)
    norm_epsilon: float = 1e-5
    rotary_base: float = 10000.0
    untie_embeddings_and_output_weights: bool = True
    # --- Grok-1 specifics (identity values for Llama) ---
    embedding_multiplier: float = 1.0
    output_multiplier: float = 1.0
    attn_logit_softcapping: float | None = None
    attn_output_multiplier: float | None = None  # score scale; 1/sqrt(head_dim) when None
    sandwich_norm: bool = False  # four RMSNorms per layer
    # --- bookkeeping ---
    hf_architecture: str = ""
    published_params: float | None = None  # e.g. 6.74e9, for the parameter-count check

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"model {self.name!r}: activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.gelu_approximate not in ("none", "tanh"):
            raise ValueError(f"model {self.name!r}: --gelu-approximate must be 'none' or 'tanh'")
        if self.hidden_size % self.num_attention_heads and self.kv_channels is None:
            raise ValueError(
                f"model {self.name!r}: --hidden-size {self.hidden_size} is not divisible by "
                f"--num-attention-heads {self.num_attention_heads}; set --kv-channels"
            )
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"model {self.name!r}: --num-attention-heads {self.num_attention_heads} is not a multiple "
                f"of --num-query-groups {self.num_query_groups}"
            )
        if self.is_moe and not 1 <= self.moe_router_topk <= self.num_experts:
            raise ValueError(
                f"model {self.name!r}: --moe-router-topk {self.moe_router_topk} must be in [1, {self.num_experts}]"
            )

    @property
    def is_moe(self) -> bool:
        return bool(self.num_experts)

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    def replace(self, **overrides) -> ModelConfig:
        """A copy with some fields changed (CLI overrides); unknown names are an error."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown model field(s) {unknown}; known fields: {sorted(known)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """A saved ``to_dict()`` (checkpoint metadata, run_info.json), older ones included."""
        return cls(**{k: v for k, v in d.items() if k not in RETIRED_FIELDS})


# Fields older moetrain versions wrote into checkpoints and logs; ignored when read back.
RETIRED_FIELDS = frozenset({"extra"})
