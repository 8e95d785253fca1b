"""``--dry-run``: what a launch would run, for its world size, without starting any rank.

Everything is what the real launch resolves (the same ``validate.resolve``): the model the flags
and ``--model`` build, the layout and what each rank holds, and the planner's memory estimate for
it (moetrain/planner, the same figures as ``tools/plan.py``). Run it with the recipe's own world
size: ``WORLD_SIZE=64 python -m moetrain.pretrain ... --dry-run`` or via torchrun on one node.
"""

from __future__ import annotations

from moetrain.training.validate import ResolvedRun


def describe_run(run: ResolvedRun) -> list[str]:
    from moetrain.models.param_count import count_parameters, padded_vocab_size
    from moetrain.planner import Layout, Setup
    from moetrain.planner.memory import GiB
    from moetrain.planner.plan import make_plan

    cfg, dims, t = run.model_cfg, run.dims, run.cfg.training
    padded = padded_vocab_size(cfg.vocab_size, dims.tp)
    params = count_parameters(cfg, padded)
    kind = f"{cfg.num_experts} experts, top-{cfg.moe_router_topk}" if cfg.is_moe else "dense"
    lines = [f"model: {cfg.name} (family {cfg.family}, {kind}): {params.total / 1e9:.3f} B parameters, "
             f"{params.active_per_token / 1e9:.3f} B active per token; {cfg.num_layers} layers, hidden "
             f"{cfg.hidden_size}, ffn {cfg.ffn_hidden_size}, heads {cfg.num_attention_heads} "
             f"(KV {cfg.num_query_groups}), vocab {cfg.vocab_size} (padded {padded}), seq {run.seq_length}",
             f"layout: {dims.describe()}; layers per stage {list(dims.layers_per_stage(cfg.num_layers))}; "
             f"{run.num_microbatches} micro-batches of {t.micro_batch_size} per step (GBS {t.global_batch_size})"]
    layout = Layout(world_size=dims.world_size, tp=dims.tp, pp=dims.pp, ep=dims.ep, expert_tp=dims.expert_tp,
                    vpp=dims.vpp, num_layer_list=dims.num_layer_list, sequence_parallel=dims.sequence_parallel,
                    use_distributed_optimizer=run.cfg.optimizer.use_distributed_optimizer,
                    recompute_granularity=t.recompute_granularity)
    setup = Setup(global_batch_size=t.global_batch_size, micro_batch_size=t.micro_batch_size,
                  seq_length=run.seq_length, bf16=t.bf16 or t.fp16, padded_vocab_size=padded)
    plan = make_plan(cfg, layout, setup)
    for stage in plan.stages:
        p = stage.params
        lines.append(f"  stage {stage.stage}: {p.layers} layers, per rank {stage.total / GiB:.2f} GiB planned "
                     f"(weights {stage.weights / GiB:.2f}, gradients {stage.gradients / GiB:.2f}, optimizer "
                     f"{stage.optimizer / GiB:.2f}, activations {stage.activations / GiB:.2f})")
    if run.cfg.lora.enabled:
        lines.append("  (the plan above is for full fine-tuning; tools/plan.py --lora-r gives the LoRA figures)")
    lines.append("dry run: nothing was started")
    return lines
