"""The parallel layout (tensor x pipeline x expert x data) and megatron-core's process groups.

``ParallelDims`` is validated before any process group exists, so a bad layout fails at once with
a message naming the flag; ``initialize`` then hands the layout to megatron-core's parallel_state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the layout needs only a model's shape; no import of the model layer at run time
    from moetrain.models.config import ModelConfig


class LayoutError(ValueError):
    """A parallel layout that cannot work; the message names the flags involved (the trainer's
    Megatron names; another tool renames them to its own with ``with_flags``)."""

    def with_flags(self, names: dict[str, str]) -> LayoutError:
        text = str(self)
        for ours, theirs in names.items():
            text = text.replace(ours, theirs)
        return LayoutError(text)


def parse_num_layer_list(text: str | None) -> tuple[int, ...] | None:
    """ModelLink's ``--num-layer-list "3,5"``: layers per pipeline stage."""
    if text is None or text == "":
        return None
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise LayoutError(f"--num-layer-list {text!r} must be comma-separated integers, e.g. '3,5'") from None
    if any(v <= 0 for v in values):
        raise LayoutError(f"--num-layer-list {text!r}: every stage needs at least one layer")
    return values


def split_layers(num_layers: int, pp: int, num_layer_list: list[int] | None = None) -> list[int]:
    """Layers per pipeline stage: ``num_layer_list`` if given, else an even split."""
    if num_layer_list is not None:
        if len(num_layer_list) != pp:
            raise LayoutError(f"--num-layer-list has {len(num_layer_list)} entries but --pp is {pp}")
        if sum(num_layer_list) != num_layers or min(num_layer_list) < 1:
            raise LayoutError(
                f"--num-layer-list {num_layer_list} must be positive and sum to the model's {num_layers} layers"
            )
        return list(num_layer_list)
    if num_layers % pp:
        raise LayoutError(f"{num_layers} layers do not split evenly over --pp {pp}; pass --num-layer-list")
    return [num_layers // pp] * pp


def default_expert_tp(tp: int, dist_backend: str) -> int:
    """The expert tensor-parallel size when none is given: the one place this default is chosen.

    megatron-core's own default is expert-TP = TP (nccl / hccl). gloo has no uneven all_gather,
    which expert-TP > 1 needs, so CPU runs use 1. The trainer passes its backend's collective
    library, the planner the one of the device it plans for.
    """
    return 1 if dist_backend == "gloo" else tp


def _min_data_parallel(tp: int, expert_group: int) -> int:
    """The fewest data-parallel replicas that let EP x expert-TP divide DP x TP."""
    return expert_group // math.gcd(tp, expert_group)


@dataclass(frozen=True)
class ParallelDims:
    """The one parallel layout: the trainer runs it, the planner plans it, the converter and the
    weight maps shard for it. ``world_size`` None means the smallest world that holds the layout
    (what a checkpoint's sharding needs: EP ranks come out of data parallelism).

    A bad layout raises ``LayoutError`` at construction, every problem in one message."""

    world_size: int | None = None
    tp: int = 1
    pp: int = 1
    ep: int = 1
    expert_tp: int = 1
    vpp: int | None = None  # virtual pipeline stages per rank (interleaved 1F1B)
    num_layer_list: tuple[int, ...] | None = None
    sequence_parallel: bool = False

    # Subclasses that describe candidate layouts (the planner's) validate on request instead.
    _check_on_init = True

    def __post_init__(self) -> None:
        if self.num_layer_list is not None and not isinstance(self.num_layer_list, tuple):
            object.__setattr__(self, "num_layer_list", tuple(self.num_layer_list))
        if self.world_size is None and min(self.tp, self.pp, self.ep, self.expert_tp) >= 1:
            dp = _min_data_parallel(self.tp, self.ep * self.expert_tp)
            object.__setattr__(self, "world_size", self.tp * self.pp * dp)
        if self._check_on_init:
            self.check()

    def _blocking_problems(self) -> list[str]:
        """Sizes below 1, or TP x PP not dividing the world: no other check is meaningful then."""
        sizes = (("--tensor-model-parallel-size", self.tp), ("--pipeline-model-parallel-size", self.pp),
                 ("--expert-model-parallel-size", self.ep), ("--expert-tensor-parallel-size", self.expert_tp))
        bad = [f"{flag} must be >= 1, got {value}" for flag, value in sizes if value < 1]
        if bad:
            return bad
        if self.world_size % (self.tp * self.pp):
            return [f"world size {self.world_size} is not divisible by tensor-parallel {self.tp} x "
                    f"pipeline-parallel {self.pp} = {self.tp * self.pp}; launch a multiple of {self.tp * self.pp} "
                    "processes (TP x PP does not divide the world size)"]
        return []

    def problems(self) -> list[str]:
        """Everything wrong with the layout itself (no model needed)."""
        blocking = self._blocking_problems()
        if blocking:
            return blocking
        errors = []
        expert_group = self.ep * self.expert_tp
        if (self.dp * self.tp) % expert_group:
            errors.append(
                f"--expert-model-parallel-size {self.ep} x --expert-tensor-parallel-size {self.expert_tp} = "
                f"{expert_group} must divide data-parallel {self.dp} x tensor-parallel {self.tp} = {self.dp * self.tp}"
            )
        if self.vpp is not None and self.vpp > 1 and self.pp < 2:
            errors.append("virtual pipeline stages need --pipeline-model-parallel-size >= 2")
        if self.num_layer_list is not None and len(self.num_layer_list) != self.pp:
            errors.append(
                f"--num-layer-list has {len(self.num_layer_list)} entries but --pipeline-model-parallel-size is {self.pp}"
            )
        if self.num_layer_list is not None and self.vpp and self.vpp > 1:
            errors.append("--num-layer-list cannot be combined with virtual pipeline stages")
        return errors

    def check(self) -> None:
        errors = self.problems()
        if errors:
            raise LayoutError(errors[0] if len(errors) == 1 else "invalid parallel layout:\n  - " + "\n  - ".join(errors))

    @property
    def dp(self) -> int:
        return self.world_size // (self.tp * self.pp)

    @property
    def expert_dp(self) -> int:
        return self.world_size // (self.pp * self.ep * self.expert_tp)

    def describe(self) -> str:
        return (f"world {self.world_size} = TP{self.tp} x PP{self.pp} x DP{self.dp}; EP{self.ep}"
                f"{' ETP' + str(self.expert_tp) if self.expert_tp > 1 else ''}"
                f"{' VPP' + str(self.vpp) if self.vpp else ''}{' +SP' if self.sequence_parallel else ''}")

    def layers_per_stage(self, num_layers: int) -> tuple[int, ...]:
        """Layers held by each pipeline stage (uneven with --num-layer-list)."""
        return tuple(split_layers(num_layers, self.pp, self.num_layer_list))

    def validate_model(self, model: ModelConfig, dist_backend: str = "gloo", training: bool = True) -> None:
        """Model-dependent checks; every failing condition names the flags involved.

        ``training=False`` (generation): megatron-core's MoE layer needs sequence parallelism under
        TP only while training; in eval it routes the replicated tokens of each TP rank correctly."""
        # A ParallelDims was checked at construction; a candidate layout (the planner's) is checked here.
        errors = [] if self._check_on_init else self.problems()
        if errors and self._blocking_problems():
            raise LayoutError("invalid parallel layout for model " + repr(model.name) + ":\n  - " + "\n  - ".join(errors))
        if model.num_attention_heads % self.tp:
            errors.append(f"--num-attention-heads {model.num_attention_heads} is not divisible by "
                          f"--tensor-model-parallel-size {self.tp}")
        if model.num_query_groups % self.tp:
            errors.append(f"--num-query-groups (KV heads) {model.num_query_groups} is not divisible by "
                          f"--tensor-model-parallel-size {self.tp}")
        if model.is_moe and model.num_experts % self.ep:
            errors.append(f"--num-experts {model.num_experts} is not divisible by "
                          f"--expert-model-parallel-size {self.ep}")
        if not model.is_moe and self.ep > 1:
            errors.append(f"--expert-model-parallel-size {self.ep} needs an MoE model (--num-experts)")
        if self.num_layer_list is not None:
            if sum(self.num_layer_list) != model.num_layers:
                errors.append(f"--num-layer-list {','.join(map(str, self.num_layer_list))} sums to "
                              f"{sum(self.num_layer_list)} but --num-layers is {model.num_layers}")
        else:
            stages = self.pp * (self.vpp or 1)
            if model.num_layers % stages:
                errors.append(f"--num-layers {model.num_layers} is not divisible by pipeline stages {self.pp}"
                              f"{f' x virtual {self.vpp} (vpp)' if self.vpp else ''}; use --num-layer-list for an uneven split")
        if training and model.is_moe and self.tp > 1 and not self.sequence_parallel:
            errors.append("MoE with --tensor-model-parallel-size > 1 requires --sequence-parallel "
                          "(megatron-core's MoE layer needs sequence-parallel input under TP)")
        if self.expert_tp > 1 and dist_backend == "gloo":
            errors.append("--expert-tensor-parallel-size > 1 needs uneven all_gather, which gloo lacks; "
                          "use 1 on CPU")
        if errors:
            raise LayoutError("invalid parallel layout for model " + repr(model.name) + ":\n  - " + "\n  - ".join(errors))

    def num_microbatches(self, global_batch_size: int, micro_batch_size: int) -> int:
        """Micro-batches per step and rank; the batch sizes must fit the data-parallel size."""
        per_step = micro_batch_size * self.dp
        if micro_batch_size < 1 or global_batch_size % per_step:
            raise LayoutError(f"--global-batch-size {global_batch_size} is not divisible by --micro-batch-size "
                              f"{micro_batch_size} x data-parallel size {self.dp} = {per_step} ({self.describe()}; "
                              "planner: --gbs / --mbs)")
        m = global_batch_size // per_step
        if self.vpp and self.vpp > 1 and m % self.pp:
            raise LayoutError(f"interleaved pipeline: micro-batches per step {m} must be a multiple of "
                              f"--pipeline-model-parallel-size {self.pp}")
        return m

    def initialize(self) -> None:
        """Create megatron-core's process groups (torch.distributed must be initialised)."""
        from megatron.core import parallel_state

        parallel_state.destroy_model_parallel()
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=self.tp,
            pipeline_model_parallel_size=self.pp,
            virtual_pipeline_model_parallel_size=self.vpp if self.vpp and self.vpp > 1 else None,
            expert_model_parallel_size=self.ep,
            expert_tensor_parallel_size=self.expert_tp,
        )
