"""The plan as a human table and as JSON."""

from __future__ import annotations

import dataclasses

from moetrain.planner.memory import GiB
from moetrain.planner.plan import Plan


def _gib(x: float) -> str:
    return f"{x / GiB:7.2f}"


def _fmt_count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def format_plan(plan: Plan) -> str:
    lay, st = plan.layout, plan.setup
    lines = [
        f"model {plan.model}: {_fmt_count(plan.params.total)} parameters "
        f"({_fmt_count(plan.params.dense)} dense, {_fmt_count(plan.params.expert)} expert, "
        f"{_fmt_count(plan.params.active_per_token)} active per token)",
        f"layout {lay.short()} on {lay.world_size} devices; GBS {st.global_batch_size} MBS "
        f"{st.micro_batch_size} seq {st.seq_length}; {plan.microbatches} micro-batches per step",
        "",
        "stage  layers  params/rank (dense + expert)   weights   grads  optim  activ  reserved   total GiB",
    ]
    for s in plan.stages:
        p = s.params
        lines.append(
            f"{s.stage:5d}  {p.layers:6d}  {_fmt_count(p.total):>9} ({_fmt_count(p.dense):>8} + "
            f"{_fmt_count(p.expert):>8})  {_gib(s.weights)} {_gib(s.gradients)} {_gib(s.optimizer)} "
            f"{_gib(s.activations)} {_gib(s.reserved)}  {_gib(s.total)}"
        )
    mem = f"{plan.device_memory_gib:.1f} GiB" if plan.device_memory_gib is not None else "unknown"
    lines += [
        "",
        f"peak memory per rank {plan.peak_memory_gib:.2f} GiB of {mem}: "
        f"{'fits' if plan.fits else 'DOES NOT FIT'}",
        f"pipeline bubble (pp-1)/(m*vpp) = {plan.bubble:.2%}",
        f"model FLOPs per step {plan.flops_per_step:.4g} ({plan.flops_per_step / 1e15:.1f} PFLOP)",
    ]
    if plan.step_seconds is not None:
        lines.append(
            f"predicted at {plan.peak_tflops:.1f} TFLOPS peak x MFU {plan.assumed_mfu:.2f} ({plan.device}): "
            f"{plan.step_seconds:.1f} s/step, {plan.tokens_per_sec_per_device:.1f} tokens/s/p"
        )
    for w in plan.warnings:
        lines.append(f"WARNING: {w}")
    if plan.suggestions:
        lines += ["", "nearest layouts that fit:"]
        for s in plan.suggestions:
            speed = (f", {s.step_seconds:.1f} s/step, {s.tokens_per_sec_per_device:.0f} tokens/s/p"
                     if s.step_seconds is not None else "")
            lines.append(f"  {s.layout.short():55s} {s.peak_memory_gib:6.1f} GiB{speed}")
    return "\n".join(lines)


def plan_to_dict(plan: Plan) -> dict:
    """JSON-ready dict; byte figures in GiB."""
    return {
        "model": plan.model,
        "layout": {**dataclasses.asdict(plan.layout), "dp": plan.layout.dp, "expert_dp": plan.layout.expert_dp},
        "setup": dataclasses.asdict(plan.setup),
        "params": {"total": plan.params.total, "dense": plan.params.dense, "expert": plan.params.expert,
                   "embedding": plan.params.embedding, "output": plan.params.output,
                   "active_per_token": plan.params.active_per_token},
        "stages": [
            {"stage": s.stage, "layers": s.params.layers, "params_dense": s.params.dense,
             "params_expert": s.params.expert, "params_total": s.params.total,
             "weights_gib": s.weights / GiB, "gradients_gib": s.gradients / GiB,
             "optimizer_gib": s.optimizer / GiB, "activations_gib": s.activations / GiB,
             "reserved_gib": s.reserved / GiB, "total_gib": s.total / GiB,
             "in_flight_microbatches": s.in_flight_microbatches}
            for s in plan.stages
        ],
        "peak_memory_gib": plan.peak_memory_gib,
        "device": plan.device,
        "device_memory_gib": plan.device_memory_gib,
        "fits": plan.fits,
        "microbatches": plan.microbatches,
        "bubble": plan.bubble,
        "flops_per_step": plan.flops_per_step,
        "peak_tflops": plan.peak_tflops,
        "assumed_mfu": plan.assumed_mfu,
        "step_seconds": plan.step_seconds,
        "tokens_per_sec_per_device": plan.tokens_per_sec_per_device,
        "warnings": list(plan.warnings),
        "suggestions": [
            {"layout": s.layout.short(), **{k: v for k, v in dataclasses.asdict(s.layout).items()},
             "peak_memory_gib": s.peak_memory_gib, "step_seconds": s.step_seconds,
             "tokens_per_sec_per_device": s.tokens_per_sec_per_device}
            for s in plan.suggestions
        ],
    }
