"""Analytic parameter counts, total and per parallel rank, without allocating a model.

Layouts follow megatron-core's GPTModel with moetrain's specs (no linear biases):
  embedding      V x h                          vocab-parallel (split over TP), first PP stage
  per layer      QKV h x (q + 2 kv), proj q x h split over TP
                 norms: 2 (Llama) or 4 (Grok-1 sandwich) x h, replicated over TP
                 dense MLP 3 x h x f (gated) split over TP, or
                 MoE: router E x h (replicated over TP) + E experts x 3 x h x f
                 (experts split over EP, each expert over expert-TP)
  final norm h, output layer V x h (last PP stage; with tied embeddings megatron-core keeps a copy
  of the embedding on the last stage when PP > 1 and all-reduces its gradient with the first).
"""

from __future__ import annotations

from dataclasses import dataclass

from moetrain.models.config import ModelConfig
from moetrain.parallel import split_layers


@dataclass(frozen=True)
class ParamCount:
    """Unique parameters of the whole model (a tied output layer is not counted twice)."""

    embedding: int
    output: int  # 0 when tied to the embedding
    attention: int  # all layers: QKV + out projection
    norms: int  # all layers' norms plus the final norm
    mlp: int  # dense MLPs (0 for MoE models)
    router: int
    expert: int  # routed experts, all layers
    num_experts: int = 0
    topk: int = 0

    @property
    def dense(self) -> int:
        """Everything that is not a routed expert (embedding and output included)."""
        return self.embedding + self.output + self.attention + self.norms + self.mlp + self.router

    @property
    def total(self) -> int:
        return self.dense + self.expert

    @property
    def active_per_token(self) -> int:
        """Parameters a token goes through (top-k experts instead of all of them)."""
        if not self.expert:
            return self.total
        return self.dense + self.expert // self.num_experts * self.topk


@dataclass(frozen=True)
class LayerParams:
    tp_sharded: int  # split over TP (divide by tp on a rank)
    tp_replicated: int  # same on every TP rank (norms, router)
    expert_one: int  # one routed expert (split over expert-TP on a rank)


def _mlp_matrices(cfg: ModelConfig) -> int:
    return 3 if cfg.activation in ("swiglu", "geglu") else 2


def layer_params(cfg: ModelConfig) -> LayerParams:
    h = cfg.hidden_size
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_query_groups * cfg.head_dim
    attention = h * (q + 2 * kv) + q * h
    norms = (4 if cfg.sandwich_norm else 2) * h
    mlp_one = _mlp_matrices(cfg) * h * cfg.ffn_hidden_size
    if cfg.is_moe:
        return LayerParams(attention, norms + cfg.num_experts * h, mlp_one)
    return LayerParams(attention + mlp_one, norms, 0)


def padded_vocab_size(vocab_size: int, tp: int = 1, divisible_by: int = 128) -> int:
    """Megatron pads the vocabulary to a multiple of ``divisible_by * tp`` (--make-vocab-size-divisible-by)."""
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple


def count_parameters(cfg: ModelConfig, padded_vocab_size: int | None = None) -> ParamCount:
    vocab = padded_vocab_size or cfg.vocab_size
    h, n = cfg.hidden_size, cfg.num_layers
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_query_groups * cfg.head_dim
    lp = layer_params(cfg)
    experts = cfg.num_experts or 0
    return ParamCount(
        embedding=vocab * h,
        output=vocab * h if cfg.untie_embeddings_and_output_weights else 0,
        attention=n * (h * (q + 2 * kv) + q * h),
        norms=n * (4 if cfg.sandwich_norm else 2) * h + h,
        mlp=0 if cfg.is_moe else n * _mlp_matrices(cfg) * h * cfg.ffn_hidden_size,
        router=n * experts * h,
        expert=n * experts * lp.expert_one,
        num_experts=experts,
        topk=cfg.moe_router_topk if experts else 0,
    )


@dataclass(frozen=True)
class RankParams:
    """Parameters held by one rank of pipeline stage ``stage`` (all TP/EP ranks of a stage alike)."""

    stage: int
    layers: int
    tp_sharded: int  # this rank's share of TP-split dense weights (embedding/output included)
    tp_replicated: int  # dense weights every TP rank holds in full (norms, router)
    expert: int  # this rank's routed-expert weights
    embedding: int  # part of tp_sharded
    output: int  # part of tp_sharded; a tied copy on the last stage when pp > 1

    @property
    def dense(self) -> int:
        return self.tp_sharded + self.tp_replicated

    @property
    def total(self) -> int:
        return self.dense + self.expert


def parameters_per_rank(
    cfg: ModelConfig,
    tp: int = 1,
    pp: int = 1,
    ep: int = 1,
    num_layer_list: list[int] | None = None,
    etp: int | None = None,
    padded_vocab_size: int | None = None,
) -> list[RankParams]:
    """Per pipeline stage, the parameters of one of its ranks.

    ``etp`` is the expert tensor-parallel size; megatron-core defaults it to ``tp``.
    """
    etp = tp if etp is None else etp
    experts = cfg.num_experts or 0
    if experts and experts % ep:
        raise ValueError(f"--num-experts {experts} is not divisible by --ep {ep}")
    if cfg.num_query_groups % tp:
        raise ValueError(f"--num-query-groups {cfg.num_query_groups} is not divisible by --tp {tp}")
    vocab = padded_vocab_size or cfg.vocab_size
    h = cfg.hidden_size
    lp = layer_params(cfg)
    emb = vocab * h // tp
    stages = []
    for stage, layers in enumerate(split_layers(cfg.num_layers, pp, num_layer_list)):
        first, last = stage == 0, stage == pp - 1
        embedding = emb if first else 0
        # Tied: one stage (pp == 1) uses the embedding as output; with pp > 1 the last stage holds
        # its own copy (megatron-core's shared embedding), so it is counted there as well.
        tied_copy = last and not cfg.untie_embeddings_and_output_weights and pp > 1
        output = emb if last and (cfg.untie_embeddings_and_output_weights or tied_copy) else 0
        stages.append(RankParams(
            stage=stage,
            layers=layers,
            tp_sharded=layers * lp.tp_sharded // tp + embedding + output,
            tp_replicated=layers * lp.tp_replicated + (h if last else 0),
            expert=layers * (experts // ep) * lp.expert_one // etp if experts else 0,
            embedding=embedding,
            output=output,
        ))
    return stages


# --------------------------------------------------------------------------- LoRA adapters
# moetrain.finetune.lora's adapters, per rank (A [r, in], B [out, r] for each projection):
#   linear_qkv   q, k and v adapters: A 3 x r x h replicated over TP, B r x (q + 2 kv) / tp
#   linear_proj  A r x q / tp (row-parallel, like the base), B h x r replicated
#   linear_fc1   gate and up adapters: A 2 x r x h replicated, B r x fc1_out / tp (2 f gated)
#   linear_fc2   A r x f / tp, B h x r replicated
#   experts      per local expert (E / ep of them, expert-TP 1): fc1 as gate and up (A 2 x r x h,
#                B 2 x f x r), fc2 as down (A r x f, B h x r) -- linear_fc1 / linear_fc2 of a MoE layer
#   router       no adapter: the router weight itself (E x h, replicated over TP) becomes trainable
LORA_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2", "router")
LORA_DEFAULT_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")


def lora_adapts_experts(cfg: ModelConfig, targets) -> bool:
    return cfg.is_moe and bool({"linear_fc1", "linear_fc2"} & set(targets))


@dataclass(frozen=True)
class RankAdapterParams:
    """Trainable parameters of a LoRA run on one rank of pipeline stage ``stage``."""

    stage: int
    dense: int  # fp32 adapters of attention and dense MLPs (reduced over DP)
    expert: int  # fp32 per-expert adapters (reduced over expert-DP)
    router: int  # router weights made trainable by the 'router' target (base dtype, part of the base count)

    @property
    def adapters(self) -> int:
        return self.dense + self.expert

    @property
    def total(self) -> int:
        return self.adapters + self.router


def _lora_layer(cfg: ModelConfig, tp: int, ep: int, etp: int, r: int, targets) -> tuple[int, int, int]:
    """(dense adapter, expert adapter, trainable router) parameters of one layer on one rank."""
    h, f = cfg.hidden_size, cfg.ffn_hidden_size
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_query_groups * cfg.head_dim
    targets = set(targets)
    unknown = targets - set(LORA_TARGETS)
    if unknown:
        raise ValueError(f"--lora-target-modules: unknown {' '.join(sorted(unknown))}; "
                         f"choose from {' '.join(LORA_TARGETS)}")
    dense = expert = router = 0
    if "linear_qkv" in targets:
        dense += 3 * r * h + r * (q + 2 * kv) // tp
    if "linear_proj" in targets:
        dense += r * q // tp + h * r
    if cfg.is_moe:
        if lora_adapts_experts(cfg, targets) and etp != 1:
            raise ValueError(f"LoRA on experts needs --expert-tensor-parallel-size 1 (got {etp})")
        local = cfg.num_experts // ep
        if "linear_fc1" in targets:
            expert += local * (2 * r * h + 2 * f * r)
        if "linear_fc2" in targets:
            expert += local * (r * f + h * r)
        if "router" in targets:
            router = cfg.num_experts * h
    else:
        if "linear_fc1" in targets:  # the adapter splits fc1's output in two halves (gate and up)
            dense += 2 * r * h + r * (_mlp_matrices(cfg) - 1) * f // tp
        if "linear_fc2" in targets:
            dense += r * f // tp + h * r
    return dense, expert, router


def lora_parameters_per_rank(
    cfg: ModelConfig,
    r: int,
    targets,
    tp: int = 1,
    pp: int = 1,
    ep: int = 1,
    num_layer_list: list[int] | None = None,
    etp: int | None = None,
) -> list[RankAdapterParams]:
    """Per pipeline stage, the trainable parameters of one of its ranks in a LoRA run
    (``moetrain.finetune.lora.apply_lora`` with rank ``r`` on ``targets``)."""
    etp = tp if etp is None else etp
    dense, expert, router = _lora_layer(cfg, tp, ep, etp, r, targets)
    return [RankAdapterParams(stage=stage, dense=layers * dense, expert=layers * expert, router=layers * router)
            for stage, layers in enumerate(split_layers(cfg.num_layers, pp, num_layer_list))]


def count_lora_parameters(cfg: ModelConfig, r: int, targets) -> int:
    """Trainable parameters of the whole model in a LoRA run (one copy of each adapter)."""
    return lora_parameters_per_rank(cfg, r, targets, etp=1)[0].total
