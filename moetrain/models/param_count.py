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
