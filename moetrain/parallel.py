"""The parallel layout (tensor x pipeline x expert x data) and megatron-core's process groups.

``ParallelDims`` is validated before any process group exists, so a bad layout fails at once with
a message naming the flag; ``initialize`` then hands the layout to megatron-core's parallel_state.
"""

from __future__ import annotations

from dataclasses import dataclass

from moetrain.models.config import ModelConfig


class LayoutError(ValueError):
    """A parallel layout that cannot work; the message names the flags involved."""


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
            raise ValueError(f"--num-layer-list has {len(num_layer_list)} entries but --pp is {pp}")
        if sum(num_layer_list) != num_layers or min(num_layer_list) < 1:
            raise ValueError(
                f"--num-layer-list {num_layer_list} must be positive and sum to the model's {num_layers} layers"
            )
        return list(num_layer_list)
    if num_layers % pp:
        raise ValueError(f"{num_layers} layers do not split evenly over --pp {pp}; pass --num-layer-list")
    return [num_layers // pp] * pp


@dataclass(frozen=True)
class ParallelDims:
    world_size: int
    tp: int = 1
    pp: int = 1
    ep: int = 1
    expert_tp: int = 1
    vpp: int | None = None  # virtual pipeline stages per rank (interleaved 1F1B)
    num_layer_list: tuple[int, ...] | None = None
    sequence_parallel: bool = False

    def __post_init__(self) -> None:
        for flag, value in (("--tensor-model-parallel-size", self.tp), ("--pipeline-model-parallel-size", self.pp),
                            ("--expert-model-parallel-size", self.ep), ("--expert-tensor-parallel-size", self.expert_tp)):
            if value < 1:
                raise LayoutError(f"{flag} must be >= 1, got {value}")
        if self.world_size % (self.tp * self.pp):
            raise LayoutError(
                f"world size {self.world_size} is not divisible by tensor-parallel {self.tp} x "
                f"pipeline-parallel {self.pp} = {self.tp * self.pp}; launch a multiple of {self.tp * self.pp} processes"
            )
        expert_group = self.ep * self.expert_tp
        if (self.dp * self.tp) % expert_group:
            raise LayoutError(
                f"--expert-model-parallel-size {self.ep} x --expert-tensor-parallel-size {self.expert_tp} = "
                f"{expert_group} must divide data-parallel {self.dp} x tensor-parallel {self.tp} = {self.dp * self.tp}"
            )
        if self.vpp is not None and self.vpp > 1 and self.pp < 2:
            raise LayoutError("virtual pipeline stages need --pipeline-model-parallel-size >= 2")
        if self.num_layer_list is not None and len(self.num_layer_list) != self.pp:
            raise LayoutError(
                f"--num-layer-list has {len(self.num_layer_list)} entries but --pipeline-model-parallel-size is {self.pp}"
            )
        if self.num_layer_list is not None and self.vpp and self.vpp > 1:
            raise LayoutError("--num-layer-list cannot be combined with virtual pipeline stages")

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

    def validate_model(self, model: ModelConfig, dist_backend: str = "gloo") -> None:
        """Model-dependent checks; every failing condition names the flags involved."""
        errors = []
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
                              f"{f' x virtual {self.vpp}' if self.vpp else ''}; use --num-layer-list for an uneven split")
        if model.is_moe and self.tp > 1 and not self.sequence_parallel:
            errors.append("MoE with --tensor-model-parallel-size > 1 requires --sequence-parallel "
                          "(megatron-core's MoE layer needs sequence-parallel input under TP)")
        if self.expert_tp > 1 and dist_backend == "gloo":
            errors.append("--expert-tensor-parallel-size > 1 needs uneven all_gather, which gloo lacks; "
                          "use 1 on CPU")
        if errors:
            raise LayoutError("invalid parallel layout for model " + repr(model.name) + ":\n  - " + "\n  - ".join(errors))

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
