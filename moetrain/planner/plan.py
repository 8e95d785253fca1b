"""A plan: parameters, memory, bubble and predicted throughput of one layout, with fitting alternatives.

Predicted step time = model FLOPs / (devices x peak x assumed MFU) x (1 + bubble) x recompute cost.
The assumed MFU is read as the efficiency of the compute itself, without pipeline bubble and
recomputation, so that layouts that differ in those are compared fairly; full recompute repeats the
forward pass (4/3 of the model FLOPs), selective recompute only the cheap core attention.

LoRA: the time estimate uses the compute a LoRA step does (:func:`lora_step_flops`): the frozen
base runs forward and its input gradients but no weight gradients (2 of the 3 weight-GEMM passes;
the attention scores keep all 3), plus the adapters' own 3 passes. ``flops_per_step`` stays the
model FLOPs (the MFU numerator the trainer logs), so LoRA and full plans show the same figure there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from moetrain.device.peak_flops import find_device, peak_flops
from moetrain.models.config import ModelConfig
from moetrain.models.param_count import (
    ParamCount,
    count_lora_parameters,
    count_parameters,
    lora_adapts_experts,
    lora_parameters_per_rank,
)
from moetrain.parallel import LayoutError
from moetrain.planner.layouts import Layout, distance, neighbours, num_microbatches, validate
from moetrain.planner.memory import GiB, Setup, StageMemory, memory_per_stage
from moetrain.training.flops import FORWARD_BACKWARD, flops_per_iteration, forward_flops_per_token
from moetrain.training.throughput import step_seconds_for_mfu, tokens_per_sec_per_device

RECOMPUTE_COST = {None: 1.0, "selective": 1.02, "full": 4 / 3}


@dataclass
class Plan:
    model: str
    layout: Layout
    setup: Setup
    params: ParamCount
    stages: list[StageMemory]
    microbatches: int
    bubble: float
    flops_per_step: float
    device: str | None
    device_memory_gib: float | None
    peak_tflops: float | None
    assumed_mfu: float
    step_seconds: float | None
    tokens_per_sec_per_device: float | None
    trainable_params: int = 0  # whole model: every parameter, or a LoRA run's adapters (+ router)
    compute_flops_per_step: float = 0.0  # what the step time is estimated from (LoRA: less than the model FLOPs)
    warnings: list[str] = field(default_factory=list)
    suggestions: list[Plan] = field(default_factory=list)

    @property
    def peak_memory_gib(self) -> float:
        return max(s.total for s in self.stages) / GiB

    @property
    def fits(self) -> bool:
        return self.device_memory_gib is None or self.peak_memory_gib <= self.device_memory_gib


def lora_step_flops(cfg: ModelConfig, setup: Setup) -> float:
    """FLOPs a LoRA step computes: frozen weight GEMMs forward + input gradient (2 passes), attention
    scores all 3, a trainable router 3, the adapters 3 (forward 2 FLOPs per adapter parameter per
    token; a token meets top-k of the experts' adapters)."""
    lora = setup.lora
    fw = forward_flops_per_token(cfg, setup.seq_length, padded_vocab_size=setup.padded_vocab_size)
    router_passes = FORWARD_BACKWARD if "router" in lora.targets else 2
    per_token = 2 * (fw.total - fw.attention - fw.router) + FORWARD_BACKWARD * fw.attention + router_passes * fw.router
    adapters = lora_parameters_per_rank(cfg, lora.r, lora.targets, etp=1)[0]  # 1 rank: the whole model
    routed = cfg.moe_router_topk / cfg.num_experts if cfg.is_moe else 0.0
    per_token += FORWARD_BACKWARD * 2 * (adapters.dense + routed * adapters.expert)
    return per_token * setup.global_batch_size * setup.seq_length


def pipeline_bubble(layout: Layout, microbatches: int) -> float:
    """Idle fraction of 1F1B relative to the ideal compute time: (pp - 1) / (m x vpp)."""
    return (layout.pp - 1) / (microbatches * layout.virtual_stages)


def make_plan(
    cfg: ModelConfig,
    layout: Layout,
    setup: Setup,
    device: str | None = None,
    device_memory_gib: float | None = None,
    assumed_mfu: float = 0.4,
    peak_tflops: float | None = None,
    reserved_gib: float = 0.0,
) -> Plan:
    """Evaluate one layout (raises ValueError when it is invalid for the model)."""
    validate(cfg, layout, setup.global_batch_size, setup.micro_batch_size)
    m = num_microbatches(layout, setup.global_batch_size, setup.micro_batch_size)
    bubble = pipeline_bubble(layout, m)
    flops = flops_per_iteration(cfg, setup.global_batch_size, setup.seq_length,
                                padded_vocab_size=setup.padded_vocab_size)
    compute = lora_step_flops(cfg, setup) if setup.lora else flops
    dtype = "bf16" if setup.bf16 else "fp32"
    peak = peak_flops(device or "", dtype, peak_tflops)
    step = tps = None
    if peak:
        step = step_seconds_for_mfu(compute, layout.world_size, peak, assumed_mfu)
        step *= (1 + bubble) * RECOMPUTE_COST[layout.recompute_granularity]
        tps = tokens_per_sec_per_device(setup.global_batch_size, setup.seq_length, step, layout.world_size)
    params = count_parameters(cfg, setup.padded_vocab_size)
    plan = Plan(
        model=cfg.name, layout=layout, setup=setup, params=params,
        stages=memory_per_stage(cfg, layout, setup, reserved_gib), microbatches=m, bubble=bubble,
        flops_per_step=flops, device=device, device_memory_gib=device_memory_gib,
        peak_tflops=peak / 1e12 if peak else None, assumed_mfu=assumed_mfu,
        step_seconds=step, tokens_per_sec_per_device=tps,
        trainable_params=count_lora_parameters(cfg, setup.lora.r, setup.lora.targets) if setup.lora else params.total,
        compute_flops_per_step=compute,
    )
    if device and peak is None:
        plan.warnings.append(f"no peak FLOPS known for device {device!r}: pass --peak-tflops for a time estimate")
    if device_memory_gib is not None and not plan.fits:
        worst = max(plan.stages, key=lambda s: s.total)
        plan.warnings.append(
            f"does not fit: stage {worst.stage} needs {worst.total / GiB:.1f} GiB per rank "
            f"> {device_memory_gib:.1f} GiB device memory"
        )
    return plan


def plan_with_suggestions(
    cfg: ModelConfig,
    layout: Layout,
    setup: Setup,
    device: str | None = None,
    device_memory_gib: float | None = None,
    assumed_mfu: float = 0.4,
    peak_tflops: float | None = None,
    reserved_gib: float = 0.0,
    max_tp: int | None = None,
    max_suggestions: int = 5,
) -> Plan:
    """``make_plan``; when the layout does not fit, the nearest fitting layouts on the same devices."""
    kwargs = dict(device=device, device_memory_gib=device_memory_gib, assumed_mfu=assumed_mfu,
                  peak_tflops=peak_tflops, reserved_gib=reserved_gib)
    plan = make_plan(cfg, layout, setup, **kwargs)
    if plan.fits or device_memory_gib is None:
        return plan
    fitting, seen = [], set()
    lora_experts = setup.lora is not None and lora_adapts_experts(cfg, setup.lora.targets)
    for cand in neighbours(cfg, layout, setup.global_batch_size, setup.micro_batch_size, max_tp):
        if lora_experts and cand.expert_tp != 1:
            cand = cand.replace(expert_tp=1)  # LoRA's expert adapters need expert-TP 1
            try:
                validate(cfg, cand, setup.global_batch_size, setup.micro_batch_size)
            except LayoutError:
                continue
        if cand in seen:
            continue
        seen.add(cand)
        p = make_plan(cfg, cand, setup, **kwargs)
        if p.fits:
            fitting.append(p)
    # nearest first; among equally near ones the faster (or, without a peak, the smaller) one
    fitting.sort(key=lambda p: (distance(p.layout, layout), p.step_seconds or 0.0, p.peak_memory_gib))
    plan.suggestions = fitting[:max_suggestions]
    if not fitting:
        plan.warnings.append(f"no layout of {layout.world_size} devices fits this model and batch setup")
    return plan


def device_memory_default(device: str | None) -> float | None:
    """The device's memory (GiB) from the peak table, used when --device-memory is not given."""
    dev = find_device(device) if device else None
    return float(dev.memory_gb) if dev else None
