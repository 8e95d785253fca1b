"""Memory per rank: weights, gradients, optimizer state and activations.

Model state (Megatron mixed precision, per parameter): bf16 weights 2 B, fp32 gradient buffer 4 B,
fp32 master weights + Adam m + v 12 B. The distributed optimizer shards the 12 B over data-parallel
replicas: dense parameters over DP, expert parameters over expert-DP. Without --bf16 (fp32 training)
weights are 4 B, gradients 4 B and Adam m + v 8 B (no master copy).

LoRA (``Setup.lora``): the base is frozen (requires_grad False), so megatron's DDP makes no gradient
buffer for it and the optimizer no state: it costs its weights only (2 B bf16, 4 B fp32). The
adapters are fp32 parameters whatever the model dtype: 4 B weights, 4 B fp32 gradients and Adam
m + v 8 B. A bf16 run adds no master copy for them: megatron's mixed-precision optimizers step fp32
parameters in place (Float16OptimizerWithFloat16Params' ``fp32_from_fp32_groups``; the distributed
optimizer's shard of an fp32 parameter is a view of it). Dense adapters' state is sharded over DP,
per-expert adapters' over expert-DP (--use-distributed-optimizer). The ``router`` target trains the
router weights themselves, at the base dtype's full cost (2 + 4 + 12 B in bf16).

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
from moetrain.models.param_count import (
    LORA_DEFAULT_TARGETS,
    RankAdapterParams,
    RankParams,
    lora_adapts_experts,
    lora_parameters_per_rank,
    parameters_per_rank,
)
from moetrain.parallel import LayoutError
from moetrain.planner.layouts import Layout, num_microbatches

GiB = 2**30


# fp32 adapter parameters: weights, gradients, Adam m + v (no master copy: they are fp32 already)
LORA_BYTES_PER_PARAM = (4, 4, 8)


@dataclass(frozen=True)
class LoraSetup:
    """A LoRA run (MindSpeed's --lora-r / --lora-target-modules): adapters of rank ``r`` on ``targets``."""

    r: int = 16
    targets: tuple[str, ...] = LORA_DEFAULT_TARGETS

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"--lora-r {self.r}: the adapter rank must be at least 1")
        if not self.targets:
            raise ValueError("--lora-target-modules: name at least one module")


@dataclass(frozen=True)
class Setup:
    """Training settings other than the layout."""

    global_batch_size: int
    micro_batch_size: int
    seq_length: int
    bf16: bool = True
    flash_attention: bool = True
    padded_vocab_size: int | None = None
    lora: LoraSetup | None = None  # None: full-parameter training


@dataclass(frozen=True)
class LoraState:
    """A LoRA rank's model state by part, in bytes (weights, gradients and optimizer are their sums)."""

    base_weights: float  # frozen: no gradient buffer, no optimizer state (the router's weights included)
    adapter_weights: float
    adapter_gradients: float
    adapter_optimizer: float  # Adam m + v, sharded like the adapters' gradients are reduced
    router_gradients: float = 0.0  # the 'router' target trains the router weights themselves
    router_optimizer: float = 0.0


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
    adapters: RankAdapterParams | None = None  # a LoRA run's trainable parameters on this rank
    lora_state: LoraState | None = None  # and its weights + gradients + optimizer by part

    @property
    def trainable(self) -> int:
        """Parameters with gradients and optimizer state on this rank (all of them without LoRA)."""
        return self.params.total if self.adapters is None else self.adapters.total

    @property
    def model_state(self) -> float:
        """Weights + gradients + optimizer state (what the live tensors of a run hold)."""
        return self.weights + self.gradients + self.optimizer

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

    LoRA (``setup.lora``, see :func:`_lora_linear_inputs`) changes what the frozen parts keep.
    """
    t = layout.tp
    h_split = t if layout.sequence_parallel else 1  # SP splits the h-sized tensors too
    h, f = cfg.hidden_size, cfg.ffn_hidden_size
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_query_groups * cfg.head_dim
    kv_saved = q if cfg.num_query_groups < cfg.num_attention_heads else kv  # expanded to all heads
    norms = 4 if cfg.sandwich_norm else 2
    by = 2 if setup.bf16 else 4
    total = norms * norm_bytes_per_token(cfg, layout, setup)
    total += by * (q + 2 * kv_saved) / t  # Q, K, V as the attention kernel saves them
    total += _attention_scores_bytes(cfg, layout, setup, by) / t
    if setup.lora is None:
        total += 2 * by * h / h_split  # inputs of QKV and of the MLP / MoE layer (norm outputs)
        total += by * q / t  # attention output = out-projection input
        total += 0 if cfg.is_moe else by * f / t  # act(gate) * up = fc2 input
    else:
        total += _lora_linear_inputs(cfg, layout, setup)
    if cfg.is_moe:
        k, etp, e = cfg.moe_router_topk, layout.expert_tp, cfg.num_experts
        # router: fp32 logits / probabilities and routing map, int64 top-k indices
        total += (9 * e + 16 * k + (4 * e if cfg.moe_router_pre_softmax else 4 * k)) / h_split
        # Each token is routed to k experts; expert-TP gathers the tokens of its etp group, each
        # rank then computes an f/etp slice: permuted input (h), fc1 out (2 f), act (f), act*up (f),
        # probability-scaled output (f), fp32 probability.
        total += k * etp / t * (by * (h + 5 * f / etp) + 4 + _lora_expert_extra(cfg, setup))
    else:
        total += by * 3 * f / t  # fc1 output (gate and up halves), act(gate)
    return total


def norm_bytes_per_token(cfg: ModelConfig, layout: Layout, setup: Setup) -> float:
    """One RMSNorm: fp32 input, fp32 rstd and, when its weight trains, the fp32 normalised tensor."""
    h_split = layout.tp if layout.sequence_parallel else 1
    return ((4 if setup.lora else 8) * cfg.hidden_size + 4) / h_split


def _lora_linear_inputs(cfg: ModelConfig, layout: Layout, setup: Setup) -> float:
    """What a LoRA layer keeps of its linears' inputs, per token (measured with saved-tensor hooks).

    A frozen megatron-core linear keeps no input (``linear_with_frozen_weight`` saves its weight
    only). An adapter keeps its input in fp32 (a copy in bf16 runs) -- the whole sequence for a
    column-parallel base, whose input sequence parallelism all-gathers -- and its [tokens, r]
    product with A for each projection (fp32). A flash attention kernel keeps its output (the
    out-projection's input) for its own backward whatever the projection does.
    """
    t, lora, by = layout.tp, setup.lora, (2 if setup.bf16 else 4)
    h, f, r = cfg.hidden_size, cfg.ffn_hidden_size, setup.lora.r
    q = cfg.num_attention_heads * cfg.head_dim
    targets = set(lora.targets)
    total = 0.0
    if "linear_qkv" in targets:
        total += 4 * h + 3 * 4 * r  # q, k, v adapters: one input, three products
    if setup.flash_attention:
        total += by * q / t
    if "linear_proj" in targets:
        # its fp32 input (shares the flash output's storage in fp32 runs) and the all-reduced product
        total += (4 * q / t if (setup.bf16 or not setup.flash_attention) else 0) + 4 * r
    if not cfg.is_moe:
        if "linear_fc1" in targets:
            total += 4 * h + 2 * 4 * r  # gate and up adapters
        if "linear_fc2" in targets:
            total += 4 * f / t + 4 * r
    else:
        total += by * h / (t if layout.sequence_parallel else 1)  # the router keeps the MoE input
    return total


def _lora_expert_extra(cfg: ModelConfig, setup: Setup) -> float:
    """Per routed token: expert adapters' fp32 inputs (copies of the bf16 ones, which the base's
    grouped GEMM still keeps) and their [tokens, r] products."""
    if setup.lora is None:
        return 0.0
    targets, r = set(setup.lora.targets), setup.lora.r
    extra = 0.0
    if "linear_fc1" in targets:
        extra += (4 * cfg.hidden_size if setup.bf16 else 0) + 2 * 4 * r
    if "linear_fc2" in targets:
        extra += (4 * cfg.ffn_hidden_size if setup.bf16 else 0) + 4 * r
    return extra


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
        if setup.lora is None:
            # int64 token ids (the embedding output is the first layer's input, counted there)
            act += 8 * tokens * flight
        else:
            # A frozen embedding keeps no ids, and nothing before the first adapter needs a gradient:
            # the first layer's input norm keeps nothing (what precedes a first adapter other than
            # linear_qkv is still counted: an overestimate of at most part of one attention block).
            act -= norm_bytes_per_token(cfg, layout, setup) * tokens * flight
    if r.stage == layout.pp - 1:
        # final norm (fp32 input, normalised, rstd), output-layer input (none when frozen), fp32
        # vocab-parallel logits, int64 labels and the loss mask; the last stage runs each
        # micro-batch's backward right after its forward (one in flight)
        output_input = 0 if setup.lora else by * cfg.hidden_size / h_split
        act += (norm_bytes_per_token(cfg, layout, setup) + output_input + 4 * vocab / layout.tp + 9) * tokens
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
    adapters = lora_per_rank(cfg, layout, setup.lora) if setup.lora else [None] * len(ranks)
    out = []
    for r, a in zip(ranks, adapters):
        flight = in_flight(layout, r.stage, m)
        act = stage_activation_bytes(cfg, layout, setup, r, flight)
        lora_state = None
        if a is None:
            weights, grads = w_b * r.total, g_b * r.total
            optim = o_b * (r.dense / dense_shard + r.expert / expert_shard)
        else:  # frozen base: weights only; trainable router: full cost; adapters: fp32
            aw, ag, ao = LORA_BYTES_PER_PARAM
            lora_state = LoraState(
                base_weights=w_b * r.total, adapter_weights=aw * a.adapters, adapter_gradients=ag * a.adapters,
                adapter_optimizer=ao * (a.dense / dense_shard + a.expert / expert_shard),
                router_gradients=g_b * a.router, router_optimizer=o_b * a.router / dense_shard)
            weights = lora_state.base_weights + lora_state.adapter_weights
            grads = lora_state.adapter_gradients + lora_state.router_gradients
            optim = lora_state.adapter_optimizer + lora_state.router_optimizer
        out.append(StageMemory(
            stage=r.stage,
            params=r,
            weights=weights,
            gradients=grads,
            optimizer=optim,
            activations=act,
            in_flight_microbatches=flight,
            reserved=reserved_gib * GiB,
            adapters=a,
            lora_state=lora_state,
        ))
    return out


def lora_per_rank(cfg: ModelConfig, layout: Layout, lora: LoraSetup) -> list[RankAdapterParams]:
    """The LoRA run's trainable parameters per stage (LayoutError when the layout cannot carry them)."""
    if lora_adapts_experts(cfg, lora.targets) and layout.expert_tp != 1:
        raise LayoutError(f"LoRA on experts (--lora-target-modules linear_fc1 / linear_fc2 of a MoE model) needs "
                          f"--expert-tensor-parallel-size 1, got {layout.expert_tp}")
    return lora_parameters_per_rank(cfg, lora.r, lora.targets, layout.tp, layout.pp, layout.ep,
                                    list(layout.num_layer_list) if layout.num_layer_list else None,
                                    etp=layout.expert_tp)
