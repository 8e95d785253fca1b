"""Model FLOPs per training iteration: the numerator of TFLOPS/device and MFU.

One function shared by the trainer's logging, the benchmark report and the planner, so the three
never disagree. It counts what Megatron-LM counts (``num_floating_point_operations``): matrix
multiplies only, 2 FLOPs per multiply-add, and backward = 2x forward (data and weight gradients), so a
step is 3x the forward pass. Recomputation is *not* counted (MFU, not hardware FLOPs utilisation).

Per token and layer, forward:
  QKV projection   2 * h * (q + 2 * kv)        q = heads * head_dim, kv = query_groups * head_dim (GQA)
  scores QK^T      2 * s * q   (x 1/2 causal)  only the unmasked half of the s x s scores is useful
  scores x V       2 * s * q   (x 1/2 causal)
  out projection   2 * q * h
  MLP (gated)      2 * 3 * h * f               three matrices (gate, up / linear_v, down)
  MoE              2 * h * E + topk * 2 * 3 * h * f   router GEMM + the top-k routed experts
and once per token: logits 2 * h * V (padded vocab).

Megatron-LM leaves the router GEMM out (it is < 0.01% for these models); it is included here
because the brief of this project asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from moetrain.models.config import ModelConfig

FORWARD_BACKWARD = 3  # forward + (activation-gradient + weight-gradient) GEMMs


@dataclass(frozen=True)
class FlopsBreakdown:
    """Forward FLOPs per token, by term (multiply by 3 * tokens for a training step)."""

    qkv: float
    attention: float  # QK^T and scores x V together
    out_proj: float
    mlp: float  # dense MLP or routed experts
    router: float
    logits: float

    @property
    def total(self) -> float:
        return self.qkv + self.attention + self.out_proj + self.mlp + self.router + self.logits


def _mlp_matrices(cfg: ModelConfig) -> int:
    # Both families are gated (SwiGLU / GeGLU): gate, up and down projections.
    return 3 if cfg.activation in ("swiglu", "geglu") else 2


def forward_flops_per_token(
    cfg: ModelConfig, seq_length: int, causal: bool = True, padded_vocab_size: int | None = None
) -> FlopsBreakdown:
    h, s, n = cfg.hidden_size, seq_length, cfg.num_layers
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_query_groups * cfg.head_dim
    vocab = padded_vocab_size or cfg.vocab_size
    causal_factor = 0.5 if causal else 1.0
    mlp_one = 2 * _mlp_matrices(cfg) * h * cfg.ffn_hidden_size
    if cfg.is_moe:
        mlp = cfg.moe_router_topk * mlp_one
        router = 2 * h * cfg.num_experts
    else:
        mlp, router = mlp_one, 0
    return FlopsBreakdown(
        qkv=n * 2 * h * (q + 2 * kv),
        attention=n * 2 * (2 * s * q) * causal_factor,
        out_proj=n * 2 * q * h,
        mlp=n * mlp,
        router=n * router,
        logits=2 * h * vocab,
    )


def flops_per_iteration(
    cfg: ModelConfig,
    global_batch_size: int,
    seq_length: int,
    causal: bool = True,
    padded_vocab_size: int | None = None,
) -> float:
    """Model FLOPs of one optimizer step over ``global_batch_size`` sequences of ``seq_length``."""
    per_token = forward_flops_per_token(cfg, seq_length, causal, padded_vocab_size).total
    return FORWARD_BACKWARD * per_token * global_batch_size * seq_length
