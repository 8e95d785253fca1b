"""Parallel layouts: what one is, whether it is valid for a model, and its neighbours."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

from moetrain.models.config import ModelConfig
from moetrain.parallel import split_layers

RECOMPUTE = (None, "selective", "full")


@dataclass(frozen=True)
class Layout:
    """A TP x PP x EP (x DP) layout plus the memory switches the planner varies."""

    world_size: int
    tp: int = 1
    pp: int = 1
    ep: int = 1
    etp: int | None = None  # expert tensor-parallel size; megatron-core's default is tp
    vpp: int | None = None  # virtual pipeline stages per rank (interleaved 1F1B)
    num_layer_list: tuple[int, ...] | None = None
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = False
    recompute_granularity: str | None = None  # None, "selective" or "full"

    @property
    def expert_tp(self) -> int:
        return self.tp if self.etp is None else self.etp

    @property
    def dp(self) -> int:
        return self.world_size // (self.tp * self.pp)

    @property
    def expert_dp(self) -> int:
        """Replicas of each expert shard: the group the distributed optimizer shards expert state over."""
        return self.world_size // (self.expert_tp * self.ep * self.pp)

    @property
    def virtual_stages(self) -> int:
        return self.vpp or 1

    def short(self) -> str:
        parts = [f"TP{self.tp}", f"PP{self.pp}", f"EP{self.ep}", f"DP{self.dp}"]
        if self.vpp and self.vpp > 1:
            parts.append(f"VPP{self.vpp}")
        if self.sequence_parallel:
            parts.append("SP")
        if self.use_distributed_optimizer:
            parts.append("distopt")
        if self.recompute_granularity:
            parts.append(f"recompute-{self.recompute_granularity}")
        return " ".join(parts)

    def replace(self, **changes) -> Layout:
        return dataclasses.replace(self, **changes)


def num_microbatches(layout: Layout, global_batch_size: int, micro_batch_size: int) -> int:
    return global_batch_size // (micro_batch_size * layout.dp)


def validate(cfg: ModelConfig, layout: Layout, global_batch_size: int, micro_batch_size: int) -> None:
    """Raise ValueError naming the offending flag when the layout cannot run this model."""
    w, tp, pp, ep, etp = layout.world_size, layout.tp, layout.pp, layout.ep, layout.expert_tp
    for flag, value in (("--tp", tp), ("--pp", pp), ("--ep", ep), ("world size", w), ("--mbs", micro_batch_size)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if w % (tp * pp):
        raise ValueError(f"--tp {tp} x --pp {pp} = {tp * pp} does not divide the world size {w}")
    if cfg.num_attention_heads % tp or cfg.num_query_groups % tp:
        raise ValueError(
            f"--tp {tp} must divide the attention heads ({cfg.num_attention_heads}) "
            f"and the query groups ({cfg.num_query_groups}) of {cfg.name}"
        )
    if cfg.is_moe:
        if cfg.num_experts % ep:
            raise ValueError(f"--ep {ep} does not divide the {cfg.num_experts} experts of {cfg.name}")
        if w % (etp * ep * pp):
            raise ValueError(f"expert-TP {etp} x --ep {ep} x --pp {pp} does not divide the world size {w}")
        if tp > 1 and not layout.sequence_parallel:
            # megatron-core refuses MoE with tensor parallelism unless sequence parallel is on
            raise ValueError("MoE with --tp > 1 requires --sequence-parallel (megatron-core)")
    elif ep != 1:
        raise ValueError(f"--ep {ep} given but {cfg.name} is a dense model (no experts)")
    if layout.sequence_parallel and tp == 1:
        raise ValueError("--sequence-parallel needs --tp > 1")
    split = split_layers(cfg.num_layers, pp, list(layout.num_layer_list) if layout.num_layer_list else None)
    if layout.vpp and layout.vpp > 1:
        if pp < 2:
            raise ValueError("--vpp needs --pp > 1")
        if any(n % layout.vpp for n in split):
            raise ValueError(f"layers per stage {split} must be divisible by --vpp {layout.vpp}")
    if global_batch_size % (micro_batch_size * layout.dp):
        raise ValueError(
            f"--gbs {global_batch_size} is not divisible by --mbs {micro_batch_size} x DP {layout.dp}"
        )
    m = num_microbatches(layout, global_batch_size, micro_batch_size)
    if layout.vpp and layout.vpp > 1 and m % pp:
        raise ValueError(f"interleaved 1F1B needs the {m} micro-batches to be a multiple of --pp {pp}")
    if layout.recompute_granularity not in RECOMPUTE:
        raise ValueError(f"--recompute-granularity must be full or selective, got {layout.recompute_granularity!r}")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def neighbours(
    cfg: ModelConfig, base: Layout, global_batch_size: int, micro_batch_size: int, max_tp: int | None = None
) -> Iterator[Layout]:
    """Every valid layout on the same device count, varying tp/pp/ep, recompute and the optimizer.

    ``max_tp`` (devices per node) keeps TP inside a node, where its per-layer all-reduces belong.
    VPP and an explicit layer list are kept only for the base layout's own pp.
    """
    experts = cfg.num_experts or 1
    for tp in _divisors(base.world_size):
        if max_tp and tp > max_tp:
            continue
        for pp in _divisors(base.world_size // tp):
            for ep in _divisors(experts) if cfg.is_moe else [1]:
                for rc in RECOMPUTE:
                    for dist in (False, True):
                        same_pp = pp == base.pp
                        cand = base.replace(
                            tp=tp, pp=pp, ep=ep, etp=base.etp if base.etp is None else min(base.etp, tp),
                            sequence_parallel=tp > 1, use_distributed_optimizer=dist,
                            recompute_granularity=rc,
                            vpp=base.vpp if same_pp else None,
                            num_layer_list=base.num_layer_list if same_pp else None,
                        )
                        try:
                            validate(cfg, cand, global_batch_size, micro_batch_size)
                        except ValueError:
                            continue
                        yield cand


def distance(a: Layout, b: Layout) -> float:
    """How far a suggestion is from what the user asked for (log2 steps plus switch changes)."""
    d = sum(abs(math.log2(x / y)) for x, y in ((a.tp, b.tp), (a.pp, b.pp), (a.ep, b.ep)))
    order = {None: 0, "selective": 1, "full": 2}
    d += abs(order[a.recompute_granularity] - order[b.recompute_granularity])
    # the distributed optimizer costs almost nothing at run time: the cheapest change to suggest
    d += 0.5 * (a.use_distributed_optimizer != b.use_distributed_optimizer)
    return d
