"""Parallel layouts: what one is, whether it is valid for a model, and its neighbours."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

from moetrain.models.config import ModelConfig
from moetrain.parallel import LayoutError, ParallelDims, default_expert_tp

RECOMPUTE = (None, "selective", "full")
# The planner plans for accelerators (NPU / GPU): their collectives decide the expert-TP default.
PLANNED_DIST_BACKEND = "nccl"


@dataclass(frozen=True)
class Layout(ParallelDims):
    """A candidate layout: the trainer's ParallelDims (same fields, same rules, same errors) plus
    the memory switches the planner varies. Unlike a ParallelDims it may be built invalid and
    checked with ``validate``, so the planner can enumerate candidates."""

    world_size: int = 1
    # None: the trainer's default for the accelerators the planner targets (default_expert_tp).
    expert_tp: int | None = None
    use_distributed_optimizer: bool = False
    recompute_granularity: str | None = None  # None, "selective" or "full"

    _check_on_init = False

    def __post_init__(self) -> None:
        if self.expert_tp is None:
            object.__setattr__(self, "expert_tp", default_expert_tp(self.tp, PLANNED_DIST_BACKEND))
        super().__post_init__()

    @property
    def virtual_stages(self) -> int:
        return self.vpp or 1

    def short(self) -> str:
        parts = [f"TP{self.tp}", f"PP{self.pp}", f"EP{self.ep}", f"DP{self.dp}"]
        if self.expert_tp != self.tp:
            parts.append(f"ETP{self.expert_tp}")
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
        if "tp" in changes and "expert_tp" not in changes and self.expert_tp == self.tp:
            changes["expert_tp"] = None  # follow the new TP, as the default does
        return dataclasses.replace(self, **changes)


def num_microbatches(layout: Layout, global_batch_size: int, micro_batch_size: int) -> int:
    return layout.num_microbatches(global_batch_size, micro_batch_size)


def validate(cfg: ModelConfig, layout: Layout, global_batch_size: int, micro_batch_size: int) -> None:
    """Raise LayoutError naming the offending flag when the layout cannot run this model: the
    trainer's own checks (ParallelDims), for the accelerator backend the planner targets."""
    layout.validate_model(cfg, PLANNED_DIST_BACKEND)
    layout.num_microbatches(global_batch_size, micro_batch_size)
    if layout.recompute_granularity not in RECOMPUTE:
        raise LayoutError(f"--recompute-granularity must be full or selective, got {layout.recompute_granularity!r}")


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
                            tp=tp, pp=pp, ep=ep, expert_tp=None if base.expert_tp == base.tp else min(base.expert_tp, tp),
                            sequence_parallel=tp > 1, use_distributed_optimizer=dist,
                            recompute_granularity=rc,
                            vpp=base.vpp if same_pp else None,
                            num_layer_list=base.num_layer_list if same_pp else None,
                        )
                        try:
                            validate(cfg, cand, global_batch_size, micro_batch_size)
                        except LayoutError:
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
