"""The plan as a human table and as JSON."""

from __future__ import annotations

import dataclasses

from moetrain.planner.memory import GiB, state_bytes_per_param
from moetrain.planner.plan import Plan


def _gib(x: float) -> str:
    return f"{x / GiB:7.2f}"


def format_count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def _trainable_line(plan: Plan) -> str:
    st = plan.setup
    if not st.lora:
        return f"full-parameter training: {format_count(plan.trainable_params)} trainable parameters"
    share = plan.trainable_params / plan.params.total
    return (f"LoRA r {st.lora.r} on {' '.join(st.lora.targets)}: {format_count(plan.trainable_params)} trainable "
            f"parameters ({share:.3%} of the model)")


def format_plan(plan: Plan) -> str:
    lay, st = plan.layout, plan.setup
    lines = [
        f"model {plan.model}: {format_count(plan.params.total)} parameters "
        f"({format_count(plan.params.dense)} dense, {format_count(plan.params.expert)} expert, "
        f"{format_count(plan.params.active_per_token)} active per token)",
        f"layout {lay.short()} on {lay.world_size} devices; GBS {st.global_batch_size} MBS "
        f"{st.micro_batch_size} seq {st.seq_length}; {plan.microbatches} micro-batches per step",
        _trainable_line(plan),
        "",
        "stage  layers  params/rank (dense + expert)  trainable   weights   grads  optim  activ  reserved   total GiB",
    ]
    for s in plan.stages:
        p = s.params
        lines.append(
            f"{s.stage:5d}  {p.layers:6d}  {format_count(p.total):>9} ({format_count(p.dense):>8} + "
            f"{format_count(p.expert):>8}) {format_count(s.trainable):>9}  {_gib(s.weights)} {_gib(s.gradients)} "
            f"{_gib(s.optimizer)} {_gib(s.activations)} {_gib(s.reserved)}  {_gib(s.total)}"
        )
    if st.lora:
        w_b = state_bytes_per_param(st.bf16)[0]
        lines += ["", f"LoRA memory per rank: frozen base weights ({w_b} B/param, no gradients, no optimizer "
                      f"state) + fp32 adapters (4 B weights, 4 B grads, 8 B Adam m+v, no master copy)"]
        for s in plan.stages:
            b = s.lora_state
            lines.append(
                f"  stage {s.stage}: base weights {b.base_weights / GiB:.2f} GiB; adapters "
                f"{format_count(s.adapters.adapters)}: weights {b.adapter_weights / GiB:.3f}, grads "
                f"{b.adapter_gradients / GiB:.3f}, Adam {b.adapter_optimizer / GiB:.3f} GiB"
                + (f"; trainable router {format_count(s.adapters.router)}: grads {b.router_gradients / GiB:.3f}, "
                   f"optimizer {b.router_optimizer / GiB:.3f} GiB" if s.adapters.router else ""))
    mem = f"{plan.device_memory_gib:.1f} GiB" if plan.device_memory_gib is not None else "unknown"
    lines += [
        "",
        f"peak memory per rank {plan.peak_memory_gib:.2f} GiB of {mem}: "
        f"{'fits' if plan.fits else 'DOES NOT FIT'}",
        f"pipeline bubble (pp-1)/(m*vpp) = {plan.bubble:.2%}",
        f"model FLOPs per step {plan.flops_per_step:.4g} ({plan.flops_per_step / 1e15:.1f} PFLOP)",
    ]
    if st.lora:
        lines.append(f"LoRA compute per step {plan.compute_flops_per_step:.4g} (frozen base: no weight gradients; "
                     f"{plan.compute_flops_per_step / plan.flops_per_step:.0%} of the model FLOPs)")
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
                   "active_per_token": plan.params.active_per_token, "trainable": plan.trainable_params},
        "lora": ({"r": plan.setup.lora.r, "target_modules": list(plan.setup.lora.targets),
                  "trainable_params": plan.trainable_params,
                  "trainable_fraction": plan.trainable_params / plan.params.total}
                 if plan.setup.lora else None),
        "stages": [
            {"stage": s.stage, "layers": s.params.layers, "params_dense": s.params.dense,
             "params_expert": s.params.expert, "params_total": s.params.total,
             "weights_gib": s.weights / GiB, "gradients_gib": s.gradients / GiB,
             "optimizer_gib": s.optimizer / GiB, "activations_gib": s.activations / GiB,
             "reserved_gib": s.reserved / GiB, "total_gib": s.total / GiB,
             "in_flight_microbatches": s.in_flight_microbatches, "trainable_params": s.trainable,
             "model_state_gib": s.model_state / GiB,
             **({"lora": {"adapter_params_dense": s.adapters.dense, "adapter_params_expert": s.adapters.expert,
                          "router_params": s.adapters.router,
                          **{f"{k}_gib": v / GiB for k, v in dataclasses.asdict(s.lora_state).items()}}}
                if s.adapters else {})}
            for s in plan.stages
        ],
        "peak_memory_gib": plan.peak_memory_gib,
        "device": plan.device,
        "device_memory_gib": plan.device_memory_gib,
        "fits": plan.fits,
        "microbatches": plan.microbatches,
        "bubble": plan.bubble,
        "flops_per_step": plan.flops_per_step,
        "compute_flops_per_step": plan.compute_flops_per_step,
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
