"""Memory per rank: weights, gradients, optimizer state and activations.

Model state (Megatron mixed precision, per parameter): bf16 weights 2 B, fp32 gradient buffer 4 B,
fp32 master weights + Adam m + v 12 B. The distributed optimizer shards the 12 B over data-parallel
replicas: dense parameters over DP, expert parameters over expert-DP. Without --bf16 (fp32 training)
weights are 4 B, gradients 4 B and Adam m + v 8 B (no master copy).

Activations follow Korthikanti et al., "Reducing Activation Recomputation in Large Transformer
Models" (2022), re-derived for this project's layers: no dropout, GQA, gated MLPs (the two fc1
halves and the activation output are saved), sandwich norms, top-k routed experts, and a flash-style
fused attention that saves no s x s scores (``flash_attention=False`` adds the softmax output, and
the soft-capped logits Grok-1 needs, per head). With sequence parallel the h-sized tensors are split
over TP; head- and ffn-sized tensors always are. Full recompute keeps each layer's input plus one
layer's working set; selective recompute drops the unfused attention scores. The 1F1B schedule
keeps ``pp - stage`` micro-batches in flight (interleaved: Megatron's warm-up count per chunk).
"""

from __future__ import annotations

from dataclasses import dataclass

from moetrain.models.config import ModelConfig
from moetrain.models.param_count import RankParams, parameters_per_rank
from moetrain.planner.layouts import Layout, num_microbatches

GiB = 2**30


@dataclass(frozen=True)
class Setup:
    """Training settings other than the layout."""

    global_batch_size: int
    micro_batch_size: int
    seq_length: int
    bf16: bool = True
    flash_attention: bool = True
    padded_vocab_size: int | None = None


@dataclass(frozen=True)
class StageMemory:
    """Bytes on one rank of pipeline stage ``stage`` (its worst-case rank)."""

    stage: int
    params: RankParams
    weights: float
    gradients: float
    optimizer: float
    activations: float
    in_flight_microbatches: float
    reserved: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.reserved


def state_bytes_per_param(bf16: bool) -> tuple[int, int, int]:
    """(weights, gradients, optimizer) bytes per parameter before any sharding."""
    return (2, 4, 12) if bf16 else (4, 4, 8)


def layer_activation_bytes_per_token(cfg: ModelConfig, layout: Layout, setup: Setup) -> float:
    """Saved activations of one transformer layer for one token of one micro-batch (no recompute).

    Itemised from what moetrain's layers save for backward (checked against saved-tensor hooks on
    CPU, ``tools/bench_planner.py``): each RMSNorm keeps its fp32 input, the fp32 normalised tensor
    and the fp32 rstd (8 h + 4 bytes, whatever the model dtype); each linear keeps its input; the
    attention kernels expand K and V to all query heads (GQA) and save the expanded copies; a gated
    MLP keeps fc1's output (2 f), act(gate) (f) and act(gate) * up (f); a routed expert also keeps
    its output scaled by the router probability (f) and the fp32 probability.
    """
    t = layout.tp
    h_split = t if layout.sequence_parallel else 1  # SP splits the h-sized tensors too
    h, f = cfg.hidden_size, cfg.ffn_hidden_size
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_query_groups * cfg.head_dim
    kv_saved = q if cfg.num_query_groups < cfg.num_attention_heads else kv  # expanded to all heads
    norms = 4 if cfg.sandwich_norm else 2
    by = 2 if setup.bf16 else 4
    total = norms * (8 * h + 4) / h_split  # fp32 norm input, normalised, rstd
    total += 2 * by * h / h_split  # inputs of QKV and of the MLP / MoE layer (norm outputs)
    total += by * (q + 2 * kv_saved) / t  # Q, K, V as the attention kernel saves them
    total += by * q / t  # attention output = out-projection input
    total += _attention_scores_bytes(cfg, layout, setup, by) / t
    if cfg.is_moe:
        k, etp, e = cfg.moe_router_topk, layout.expert_tp, cfg.num_experts
        # router: fp32 logits / probabilities and routing map, int64 top-k indices
        total += (9 * e + 16 * k + (4 * e if cfg.moe_router_pre_softmax else 4 * k)) / h_split
        # Each token is routed to k experts; expert-TP gathers the tokens of its etp group, each
        # rank then computes an f/etp slice: permuted input (h), fc1 out (2 f), act (f), act*up (f),
        # probability-scaled output (f), fp32 probability.
        total += k * etp / t * (by * (h + 5 * f / etp) + 4)
    else:
        total += by * 4 * f / t  # fc1 output (gate and up halves), act(gate), act(gate) * up
    return total


def layer_activation_bytes_fixed(cfg: ModelConfig, setup: Setup) -> float:
    """Per layer and micro-batch, independent of the batch size: RoPE cos/sin for Q and K, and the
    causal mask of the unfused attention."""
    by = 2 if setup.bf16 else 4
    fixed = 4 * setup.seq_length * cfg.head_dim * by
    if not setup.flash_attention and cfg.attn_logit_softcapping:
        fixed += setup.seq_length**2  # bool [s, s]
    return fixed


def _attention_scores_bytes(cfg: ModelConfig, layout: Layout, setup: Setup, by: int) -> float:
    a, s = cfg.num_attention_heads, setup.seq_length
    if setup.flash_attention:
        return 4 * a  # fp32 log-sum-exp per head and query
    if layout.recompute_granularity == "selective":
        return 0.0  # core attention is recomputed
    # fp32 scores (soft-cap input) and fp32 softmax output over s keys, plus the probabilities
    # cast back to the model dtype for probs @ V
    per_head = 8 * s + (by * s if by != 4 else 0)
    return a * per_head


def in_flight(layout: Layout, stage: int, microbatches: int) -> float:
    """Micro-batches whose activations stage ``stage`` holds at the 1F1B peak (layer-weighted)."""
    pp, v = layout.pp, layout.virtual_stages
    if v == 1:
        return float(min(pp - stage, microbatches))
    # interleaved warm-up: 2 (pp - stage - 1) + (v - 1) pp + 1 chunk forwards, each 1/v of the stage
    return min((2 * (pp - stage - 1) + (v - 1) * pp + 1) / v, float(microbatches))


def stage_activation_bytes(cfg: ModelConfig, layout: Layout, setup: Setup, r: RankParams,
                           flight: float = 1.0) -> float:
    """Activation bytes of a rank of stage ``r.stage`` holding ``flight`` micro-batches (1: one micro-batch)."""
    tokens = setup.micro_batch_size * setup.seq_length
    per_layer = layer_activation_bytes_per_token(cfg, layout, setup) * tokens
    per_layer += layer_activation_bytes_fixed(cfg, setup)
    by = 2 if setup.bf16 else 4
    h_split = layout.tp if layout.sequence_parallel else 1
    vocab = setup.padded_vocab_size or cfg.vocab_size
    if layout.recompute_granularity == "full":
        # only each layer's input is kept; backward rebuilds one layer at a time
        act = r.layers * by * cfg.hidden_size / h_split * tokens * flight + per_layer
    else:
        act = r.layers * per_layer * flight
    if r.stage == 0:
        # int64 token ids (the embedding output is the first layer's input, counted there)
        act += 8 * tokens * flight
    if r.stage == layout.pp - 1:
        # final norm (fp32 input, normalised, rstd), output-layer input, fp32 vocab-parallel logits,
        # int64 labels and the loss mask; the last stage runs each micro-batch's backward right after
        # its forward (one in flight)
        act += ((8 * cfg.hidden_size + 4 + by * cfg.hidden_size) / h_split + 4 * vocab / layout.tp + 9) * tokens
    return act


def memory_per_stage(
    cfg: ModelConfig, layout: Layout, setup: Setup, reserved_gib: float = 0.0
) -> list[StageMemory]:
    """Memory of one rank in each pipeline stage."""
    ranks = parameters_per_rank(
        cfg, layout.tp, layout.pp, layout.ep,
        list(layout.num_layer_list) if layout.num_layer_list else None,
        etp=layout.expert_tp, padded_vocab_size=setup.padded_vocab_size,
    )
    w_b, g_b, o_b = state_bytes_per_param(setup.bf16)
    dense_shard = layout.dp if layout.use_distributed_optimizer else 1
    expert_shard = layout.expert_dp if layout.use_distributed_optimizer else 1
    m = num_microbatches(layout, setup.global_batch_size, setup.micro_batch_size)
    out = []
    for r in ranks:
        flight = in_flight(layout, r.stage, m)
        act = stage_activation_bytes(cfg, layout, setup, r, flight)
        out.append(StageMemory(
            stage=r.stage,
            params=r,
            weights=w_b * r.total,
            gradients=g_b * r.total,
            optimizer=o_b * (r.dense / dense_shard + r.expert / expert_shard),
            activations=act,
            in_flight_microbatches=flight,
            reserved=reserved_gib * GiB,
        ))
    return out
