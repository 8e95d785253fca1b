"""The planner checked against reality: what real training components hold, per rank, on CPU.

Each rank builds its model, DDP wrapper and optimizer with ``moetrain.training.trainer`` (exactly as
pretraining does), runs one micro-batch forward + backward of its pipeline stage with a
``saved_tensors_hooks`` tracker, takes one optimizer step and returns what it holds in bytes.
Pipeline stages do not exchange tensors here: a later stage gets a random input of the shape the
previous stage would send, so every stage is measured for exactly one micro-batch. A LoRA case puts
the adapters on each chunk with ``moetrain.finetune.lora.apply_lora``, as LoRA fine-tuning does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moetrain.planner.memory import LoraSetup


class SavedTensorTracker:
    """Bytes of the unique storages autograd saves for backward, parameters excluded.

    Storages are kept alive until the tracker is dropped, so a freed address is never reused and
    counted twice (or missed) within one phase.
    """

    def __init__(self, exclude_ptrs: set[int]):
        self.exclude = exclude_ptrs
        self.phase = "forward"
        self.seen: dict[str, dict[int, tuple[object, int]]] = {"forward": {}, "backward": {}}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        ptr = s.data_ptr()
        if ptr and ptr not in self.exclude:
            self.seen[self.phase].setdefault(ptr, (s, s.nbytes()))
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def total(self, phase: str) -> int:
        return sum(n for _, n in self.seen[phase].values())

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


def _resolve(flavor, world, tp, pp, ep, num_layer_list, dtype, distopt, recompute, mbs, seq):
    from moetrain.config import OptimizerSection, ParallelSection, PretrainConfig, TrainingSection
    from moetrain.training.validate import resolve

    dp = world // (tp * pp)
    cfg = PretrainConfig(
        model=flavor,
        parallel=ParallelSection(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                 expert_model_parallel_size=ep, sequence_parallel=tp > 1,
                                 num_layer_list=",".join(map(str, num_layer_list)) if num_layer_list else None),
        training=TrainingSection(micro_batch_size=mbs, global_batch_size=mbs * dp, seq_length=seq, train_iters=0,
                                 bf16=dtype == "bf16", recompute_granularity=recompute,
                                 recompute_method="uniform" if recompute == "full" else None,
                                 recompute_num_layers=1 if recompute == "full" else None),
        optimizer=OptimizerSection(use_distributed_optimizer=distopt),
    )
    return resolve(cfg, world)


def measure(world, flavor, tp, pp, ep, num_layer_list, dtype, distopt, recompute, mbs, seq,
            lora: LoraSetup | None = None):
    """One configuration on this rank (torch.distributed initialised): a dict of counts and bytes."""
    from megatron.core import parallel_state as ps

    from moetrain.device import get_backend
    from moetrain.training.trainer import build_model_and_optimizer, parameter_counts, seed_everything

    run = _resolve(flavor, world, tp, pp, ep, num_layer_list, dtype, distopt, recompute, mbs, seq)
    run.dims.initialize()
    seed_everything(1234)
    prepare = None
    if lora is not None:
        from moetrain.finetune.lora.apply import apply_lora

        def prepare(chunk):
            apply_lora(chunk, set(lora.targets), lora.r, 2.0 * lora.r, 0.0)

    model, optimizer, _, padded = build_model_and_optimizer(run, get_backend().batch_p2p_comm, prepare_chunk=prepare)
    ddp = model[0]
    cfg = run.model_cfg

    params = {n: p for n, p in ddp.module.named_parameters()}
    # the base model's parameters (adapters are the ``*_lora`` modules' own)
    base = {n: p for n, p in params.items() if "_lora." not in n}
    trainable = [p for p in params.values() if p.requires_grad]
    dense = sum(p.numel() for p in base.values() if getattr(p, "allreduce", True))
    expert = sum(p.numel() for p in base.values() if not getattr(p, "allreduce", True))
    trainable_dense = sum(p.numel() for p in trainable if getattr(p, "allreduce", True))
    trainable_expert = sum(p.numel() for p in trainable if not getattr(p, "allreduce", True))
    weights = sum(p.numel() * p.element_size() for p in params.values())
    grad_buffers = sum(b.grad_data.numel() * b.grad_data.element_size()
                       for b in ddp.buffers + ddp.expert_parallel_buffers)
    grads_unpadded = sum(p.main_grad.numel() * p.main_grad.element_size() for p in trainable)
    param_ptrs = {p.untyped_storage().data_ptr() for p in params.values()}
    counts = parameter_counts(model)  # whole model, as the run report gives them

    # --- one micro-batch forward + backward of this stage, saved tensors tracked
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, cfg.vocab_size, (mbs, seq), generator=g)
    labels = torch.roll(tokens, -1, dims=1)
    position_ids = torch.arange(seq).unsqueeze(0).expand(mbs, -1)
    first, last = ps.is_pipeline_first_stage(), ps.is_pipeline_last_stage()
    mdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    inp = None
    if not first:
        s_local = seq // tp if tp > 1 else seq
        inp = torch.randn(s_local, mbs, cfg.hidden_size, generator=g).to(mdtype).requires_grad_(True)
        ddp.module.set_input_tensor(inp)
    tracker = SavedTensorTracker(param_ptrs)
    ddp.zero_grad_buffer()
    with tracker.hooks():
        out = ddp(tokens, position_ids, None, labels=labels if last else None)
        tracker.phase = "backward"
        if last:
            out.float().sum().backward()
        else:
            out.backward(torch.randn(out.shape, generator=g).to(out.dtype))
    act_forward, act_backward = tracker.total("forward"), tracker.total("backward")
    del tracker, out

    # --- one optimizer step (creates Adam state), then the optimizer-owned tensors
    optimizer.step()
    opt_bytes, adam_bytes, master_bytes = _optimizer_bytes(optimizer, param_ptrs)
    inner = ddp.module.module if dtype == "bf16" else ddp.module  # Float16Module wraps the GPTModel
    layers = len(inner.decoder.layers)
    return {
        "rank": torch.distributed.get_rank(), "stage": ps.get_pipeline_model_parallel_rank(), "tp_rank": ps.get_tensor_model_parallel_rank(),
        "ep_rank": ps.get_expert_model_parallel_rank(), "dp_rank": ps.get_data_parallel_rank(),
        "padded_vocab": padded, "layers": layers, "dense": dense, "expert": expert,
        "trainable_dense": trainable_dense, "trainable_expert": trainable_expert, "weights": weights,
        "grad_buffers": grad_buffers, "grads": grads_unpadded, "optimizer": opt_bytes, "adam": adam_bytes,
        "master": master_bytes, "act_forward": act_forward, "act_backward": act_backward, **counts,
    }


def _optimizer_bytes(optimizer, param_ptrs: set[int]) -> tuple[int, int, int]:
    """(all optimizer-owned tensor bytes, Adam m + v bytes, fp32 master-copy bytes).

    Walks every sub-optimizer (megatron's ChainedOptimizer holds one per dense / expert group);
    tensors that share a model parameter's storage (fp32 "main params" of the distributed optimizer
    are views of the parameters) are not optimizer memory.
    """
    subs = getattr(optimizer, "chained_optimizers", [optimizer])
    seen: dict[int, int] = {}
    adam = master = 0
    for sub in subs:
        inner = sub.optimizer
        for group in inner.param_groups:
            for p in group["params"]:
                ptr = p.untyped_storage().data_ptr()
                if ptr not in param_ptrs and ptr not in seen:
                    seen[ptr] = p.numel() * p.element_size()
                    master += seen[ptr]
                for t in inner.state.get(p, {}).values():
                    if torch.is_tensor(t) and t.numel() > 1:
                        tp = t.untyped_storage().data_ptr()
                        if tp not in seen:
                            seen[tp] = t.numel() * t.element_size()
                            adam += seen[tp]
    return adam + master, adam, master


# --------------------------------------------------------------------------- cases and comparison
@dataclass(frozen=True)
class Case:
    """One build on every rank of a layout: model flavor and training setup."""

    flavor: str
    dtype: str = "fp32"  # fp32 | bf16
    distopt: bool = False
    recompute: str | None = None  # None | "full"
    lora: LoraSetup | None = None  # a LoRA run (frozen base, fp32 adapters)


@dataclass(frozen=True)
class LayoutSpec:
    name: str
    world: int
    tp: int = 1
    pp: int = 1
    ep: int = 1
    num_layer_list: tuple[int, ...] | None = None


LAYOUTS = (
    LayoutSpec("1rank", 1),
    LayoutSpec("TP2", 2, tp=2),
    LayoutSpec("PP2", 2, pp=2),
    LayoutSpec("EP2", 2, ep=2),
    LayoutSpec("TP2xPP2xEP2", 8, tp=2, pp=2, ep=2),
    LayoutSpec("PP2(1+3)", 2, pp=2, num_layer_list=(1, 3)),
)


def effective_ep(spec: LayoutSpec, flavor: str) -> int:
    """Dense flavors have no experts: an EP layout runs them with EP 1 (same TP / PP / DP)."""
    from moetrain.models.registry import get_flavor

    return spec.ep if get_flavor(flavor).is_moe else 1


def measure_cases(rank, world, spec: LayoutSpec, cases: list[Case], mbs: int, seq: int) -> list[dict]:
    """Rank entry point for ``moetrain.testing.spawn.run_on_ranks``: every case on this layout."""
    del rank
    out = []
    for c in cases:
        out.append(measure(world, c.flavor, spec.tp, spec.pp, effective_ep(spec, c.flavor), spec.num_layer_list,
                           c.dtype, c.distopt, c.recompute, mbs, seq, c.lora))
    return out


def planner_layout(spec: LayoutSpec, case: Case):
    from moetrain.planner.layouts import Layout

    return Layout(world_size=spec.world, tp=spec.tp, pp=spec.pp, ep=effective_ep(spec, case.flavor), expert_tp=1,
                  num_layer_list=spec.num_layer_list, sequence_parallel=spec.tp > 1,
                  use_distributed_optimizer=case.distopt, recompute_granularity=case.recompute)


def predict(spec: LayoutSpec, case: Case, mbs: int, seq: int, padded_vocab: int) -> list[dict]:
    """The planner's per-rank figures for each pipeline stage (one micro-batch of activations)."""
    from moetrain.models.registry import get_flavor
    from moetrain.planner.memory import Setup, memory_per_stage, stage_activation_bytes

    cfg = get_flavor(case.flavor, seq_length=seq)
    layout = planner_layout(spec, case)
    setup = Setup(global_batch_size=mbs * layout.dp, micro_batch_size=mbs, seq_length=seq,
                  bf16=case.dtype == "bf16", flash_attention=cfg.attn_logit_softcapping is None,
                  padded_vocab_size=padded_vocab, lora=case.lora)
    return [{"stage": s.stage, "dense": s.params.dense, "expert": s.params.expert,
             "trainable_dense": s.params.dense if s.adapters is None else s.adapters.dense + s.adapters.router,
             "trainable_expert": s.params.expert if s.adapters is None else s.adapters.expert, "weights": s.weights,
             "gradients": s.gradients, "optimizer": s.optimizer,
             "activations": stage_activation_bytes(cfg, layout, setup, s.params, 1.0)}
            for s in memory_per_stage(cfg, layout, setup)]


def predicted_parameter_counts(case: Case, padded_vocab: int) -> dict[str, int]:
    """The whole model's parameters and trainable parameters (the run report's figures), analytically.
    A LoRA model's parameters include its adapters (as PEFT's ``print_trainable_parameters`` counts)."""
    from moetrain.models.param_count import count_parameters, lora_parameters_per_rank
    from moetrain.models.registry import get_flavor

    cfg = get_flavor(case.flavor)
    total = count_parameters(cfg, padded_vocab).total
    if case.lora is None:
        return {"parameters": total, "trainable_parameters": total}
    lora = lora_parameters_per_rank(cfg, case.lora.r, case.lora.targets, etp=1)[0]  # 1 rank: the whole model
    return {"parameters": total + lora.adapters, "trainable_parameters": lora.total}


def measured_activations(r: dict, recompute: str | None) -> int:
    """Peak saved-for-backward bytes of one micro-batch: the forward's saved tensors, plus with full
    recompute one layer's re-run working set (the backward phase's saved tensors over the layers)."""
    if recompute == "full":
        return r["act_forward"] + r["act_backward"] // max(r["layers"], 1)
    return r["act_forward"]


def compare(spec: LayoutSpec, case: Case, results: list[dict], mbs: int, seq: int) -> list[dict]:
    """Rows (one per pipeline stage and component): predicted vs measured.

    Per-rank figures: parameters, weights, gradients and (without the distributed optimizer)
    optimizer state are compared rank by rank (every rank of a stage must agree); with the
    distributed optimizer the per-rank optimizer state is the mean over the stage's ranks (the
    planner's even split; the actual shards differ by megatron's bucket boundaries). Activations:
    the largest rank of the stage.
    """
    pred = predict(spec, case, mbs, seq, results[0]["padded_vocab"])
    rows = []
    for p in pred:
        ranks = [r for r in results if r["stage"] == p["stage"]]

        def same(key, ranks=ranks):
            values = {r[key] for r in ranks}
            return values.pop() if len(values) == 1 else sorted(values)

        meas = {
            "dense params": same("dense"), "expert params": same("expert"),
            "trainable dense": same("trainable_dense"), "trainable expert": same("trainable_expert"),
            "weights": same("weights"),
            "gradients": same("grads"), "grad buffers": max(r["grad_buffers"] for r in ranks),
            "optimizer": (sum(r["optimizer"] for r in ranks) / len(ranks)) if case.distopt else same("optimizer"),
            "activations": max(measured_activations(r, case.recompute) for r in ranks),
        }
        predicted = {"dense params": p["dense"], "expert params": p["expert"],
                     "trainable dense": p["trainable_dense"], "trainable expert": p["trainable_expert"],
                     "weights": p["weights"],
                     "gradients": p["gradients"], "grad buffers": p["gradients"], "optimizer": p["optimizer"],
                     "activations": p["activations"]}
        for comp, m in meas.items():
            pv = predicted[comp]
            err = None if isinstance(m, list) or not m else 100.0 * (pv - m) / m
            rows.append({"layout": spec.name, "flavor": case.flavor, "dtype": case.dtype,
                         "lora": f"r{case.lora.r} {' '.join(case.lora.targets)}" if case.lora else None,
                         "distopt": case.distopt, "recompute": case.recompute or "none", "stage": p["stage"],
                         "component": comp, "predicted": pv, "measured": m, "error_pct": err})
    return rows
