"""``--dry-run``: what a launch would run, for its world size, without starting any rank.

Everything is what the real launch resolves (the same ``validate.resolve``): the model the flags
and ``--model`` build, the layout and what each rank holds, and the planner's memory estimate for
it (moetrain/planner, the same figures as ``tools/plan.py``). Run it with the recipe's own world
size: ``WORLD_SIZE=64 python -m moetrain.pretrain ... --dry-run`` or via torchrun on one node.
"""

from __future__ import annotations

from moetrain.training.validate import ResolvedRun


def _bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def describe_run(run: ResolvedRun) -> list[str]:
    from moetrain.models.param_count import count_parameters, padded_vocab_size
    from moetrain.planner import Layout, Setup
    from moetrain.planner.memory import LoraSetup
    from moetrain.planner.plan import make_plan
    from moetrain.planner.report import format_count

    cfg, dims, t = run.model_cfg, run.dims, run.cfg.training
    padded = padded_vocab_size(cfg.vocab_size, dims.tp)
    params = count_parameters(cfg, padded)
    kind = f"{cfg.num_experts} experts, top-{cfg.moe_router_topk}" if cfg.is_moe else "dense"
    lines = [f"model: {cfg.name} (family {cfg.family}, {kind}): {format_count(params.total)} parameters, "
             f"{format_count(params.active_per_token)} active per token; {cfg.num_layers} layers, hidden "
             f"{cfg.hidden_size}, ffn {cfg.ffn_hidden_size}, heads {cfg.num_attention_heads} "
             f"(KV {cfg.num_query_groups}), vocab {cfg.vocab_size} (padded {padded}), seq {run.seq_length}",
             f"layout: {dims.describe()}; layers per stage {list(dims.layers_per_stage(cfg.num_layers))}; "
             f"{run.num_microbatches} micro-batches of {t.micro_batch_size} per step (GBS {t.global_batch_size})"]
    layout = Layout(world_size=dims.world_size, tp=dims.tp, pp=dims.pp, ep=dims.ep, expert_tp=dims.expert_tp,
                    vpp=dims.vpp, num_layer_list=dims.num_layer_list, sequence_parallel=dims.sequence_parallel,
                    use_distributed_optimizer=run.cfg.optimizer.use_distributed_optimizer,
                    recompute_granularity=t.recompute_granularity)
    lora = run.cfg.lora
    setup = Setup(global_batch_size=t.global_batch_size, micro_batch_size=t.micro_batch_size,
                  seq_length=run.seq_length, bf16=t.bf16 or t.fp16, padded_vocab_size=padded,
                  lora=LoraSetup(r=lora.lora_r, targets=tuple(lora.lora_target_modules)) if lora.enabled else None)
    plan = make_plan(cfg, layout, setup)
    for stage in plan.stages:
        p = stage.params
        lines.append(f"  stage {stage.stage}: {p.layers} layers, per rank {_bytes(stage.total)} planned "
                     f"(weights {_bytes(stage.weights)}, gradients {_bytes(stage.gradients)}, optimizer "
                     f"{_bytes(stage.optimizer)}, activations {_bytes(stage.activations)})")
    if lora.enabled:
        lines.append(f"  LoRA r {lora.lora_r} on {' '.join(lora.lora_target_modules)}: the base is frozen (weights "
                     "only); the gradients and optimizer state above are the adapters'")
    lines.append("dry run: nothing was started")
    return lines
