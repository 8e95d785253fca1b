"""Rank-side code for the device, redirect, layout and spawn-harness tests.

Loaded by moetrain.testing.spawn in each rank (torch.distributed is up, the CPU backend set up).
"""

from __future__ import annotations

import time

import torch


# ---------------------------------------------------------------- spawn harness
def return_values(rank, world, scale):
    return {"rank": rank, "world": world, "tensor": torch.arange(3) * scale + rank}


def fail_on_rank(rank, world, bad_rank):
    if rank == bad_rank:
        raise ValueError(f"deliberate failure on rank {rank}")
    return rank


def hang_on_rank(rank, world, bad_rank):
    if rank == bad_rank:
        time.sleep(3600)
    return rank


# ---------------------------------------------------------------- parallel layout
def layout_groups(rank, world, tp, pp, ep):
    """Sizes, ranks and group members megatron-core reports after ParallelDims.initialize()."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from moetrain.parallel import ParallelDims

    ParallelDims(world_size=world, tp=tp, pp=pp, ep=ep, sequence_parallel=tp > 1).initialize()

    def members(group):
        return dist.get_process_group_ranks(group)

    return {
        "tp": (ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank(),
               members(ps.get_tensor_model_parallel_group())),
        "pp": (ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank(),
               members(ps.get_pipeline_model_parallel_group())),
        "dp": (ps.get_data_parallel_world_size(), ps.get_data_parallel_rank(),
               members(ps.get_data_parallel_group())),
        "ep": (ps.get_expert_model_parallel_world_size(), ps.get_expert_model_parallel_rank(),
               members(ps.get_expert_model_parallel_group())),
        "etp": (ps.get_expert_tensor_parallel_world_size(), ps.get_expert_tensor_parallel_rank()),
        "edp": (ps.get_expert_data_parallel_world_size(), ps.get_expert_data_parallel_rank(),
                members(ps.get_expert_data_parallel_group())),
    }


# ---------------------------------------------------------------- CPU redirections
def _redirect_checks() -> dict:
    import importlib

    from moetrain.device import cpu_redirects

    utils = importlib.import_module("megatron.core.transformer.utils")
    moe_utils = importlib.import_module("megatron.core.transformer.moe.moe_utils")
    x = torch.ones(2)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        pass
    torch.cuda.synchronize()
    return {
        "applied": cpu_redirects.is_applied(),
        "current_device": torch.device(torch.cuda.current_device()).type,
        "factory_device": torch.zeros(2, device=torch.cuda.current_device()).device.type,
        "type_cuda_float": x.type() == "torch.cuda.FloatTensor",
        "type_float": x.type() == "torch.FloatTensor",
        "type_not_half": x.type() != "torch.cuda.HalfTensor",
        "type_bf16": x.bfloat16().type() == "torch.cuda.BFloat16Tensor",
        "type_convert": x.type(torch.float64).dtype == torch.float64,
        "tensor_cuda_is_self": x.cuda() is x,
        "causal_mask": utils.get_default_causal_mask(4),
        "swa_mask_device": utils.get_sliding_window_causal_mask(4, 4, (1, 0)).device.type,
        "te_general_gemm_defined": hasattr(moe_utils, "te_general_gemm"),
        "as_numpy": type(moe_utils.maybe_move_tensor_to_cpu(torch.tensor([1, 2]), as_numpy=True)).__name__,
        "stream_equal": torch.cuda.current_stream() == stream,
    }


def _tiny_config(flavor: str, tp: int, seed_init_on_device: bool):
    from moetrain.device import get_backend
    from moetrain.models import get_flavor
    from moetrain.parallel import ParallelDims
    from moetrain.training.transformer_config import RuntimeOptions, build_transformer_config

    cfg = get_flavor(flavor)
    world = torch.distributed.get_world_size()
    dims = ParallelDims(world_size=world, tp=tp, sequence_parallel=tp > 1)
    dims.validate_model(cfg)
    dims.initialize()
    options = RuntimeOptions(dtype="fp32", use_cpu_initialization=not seed_init_on_device,
                             batch_p2p_comm=get_backend().batch_p2p_comm)
    return cfg, build_transformer_config(cfg, dims, options)


def _build(cfg, config, seed: int):
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from moetrain.models.builder import build_model
    from moetrain.models.param_count import padded_vocab_size

    model_parallel_cuda_manual_seed(seed)
    return build_model(cfg, config, padded_vocab_size(cfg.vocab_size, config.tensor_model_parallel_size))


def _rng_tracker_checks(seed: int) -> dict:
    from megatron.core.tensor_parallel.random import (
        get_cuda_rng_tracker,
        get_expert_parallel_rng_tracker_name,
        model_parallel_cuda_manual_seed,
    )

    model_parallel_cuda_manual_seed(seed)
    tracker = get_cuda_rng_tracker()
    outer_before = torch.get_rng_state()
    with tracker.fork():
        tp_draw = torch.randn(4)
    restored = torch.equal(torch.get_rng_state(), outer_before)
    with tracker.fork():
        tp_draw_again = torch.randn(4)  # the fork's state advanced: a new draw
    with tracker.fork(get_expert_parallel_rng_tracker_name()):
        expert_draw = torch.randn(4)
    outer_draw = torch.randn(4)  # default (data-parallel) stream: the same on every TP rank
    return {"tracker": type(tracker).__name__, "tp_draw": tp_draw, "tp_draw_again": tp_draw_again,
            "expert_draw": expert_draw, "outer_draw": outer_draw, "outer_restored": restored}


def redirects_and_rng(rank, world):
    """TP2 + sequence-parallel MoE model initialised through the RNG tracker (use_cpu_initialization=False)."""
    out = {"redirects": _redirect_checks()}
    cfg, config = _tiny_config("mixtral-tiny", tp=world, seed_init_on_device=True)
    assert not config.use_cpu_initialization and config.sequence_parallel
    out["rng"] = _rng_tracker_checks(seed=11)
    first = _build(cfg, config, seed=5)
    out["params"] = {n: p.detach().clone() for n, p in first.named_parameters()}
    same = _build(cfg, config, seed=5)
    other = _build(cfg, config, seed=6)
    out["same_seed_equal"] = all(torch.equal(p, q) for p, q in zip(first.parameters(), same.parameters()))
    out["other_seed_differs"] = [n for (n, p), q in zip(first.named_parameters(), other.parameters())
                                 if torch.equal(p, q)]
    return out


# ---------------------------------------------------------------- model layers use the kernel table
def model_uses_kernel_table(rank, world, flavor):
    """Forward a tiny model with recording kernels (each delegates to the active table's entry)."""
    from collections import Counter

    from moetrain.kernels import get_kernels, override_kernels

    cfg, config = _tiny_config(flavor, tp=1, seed_init_on_device=False)
    model = _build(cfg, config, seed=3).eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    position_ids = torch.arange(8).unsqueeze(0).expand(2, -1)
    with torch.no_grad():
        reference = model(tokens, position_ids, None)
    calls: Counter = Counter()
    base = get_kernels()

    def recorder(name):
        def call(*args, **kwargs):
            calls[name] += 1
            return getattr(base, name)(*args, **kwargs)

        return call

    with override_kernels(**{k: recorder(k) for k in ("rms_norm", "rotary", "glu", "attention", "softcap_attention", "grouped_gemm")}):
        with torch.no_grad():
            recorded = model(tokens, position_ids, None)
    return {"calls": dict(calls), "same_output": torch.equal(reference, recorded),
            "num_layers": cfg.num_layers, "sandwich": cfg.sandwich_norm, "variants": dict(base.variants),
            "train_step_ops": _profiled_train_step_ops(model, tokens, position_ids)}


def _profiled_train_step_ops(model, tokens, position_ids) -> dict[str, int]:
    """aten op counts of one forward + backward under torch.profiler (the experts' GEMMs)."""
    from torch.profiler import ProfilerActivity, profile

    model.train()
    labels = torch.roll(tokens, -1, 1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(tokens, position_ids, None, labels=labels).float().mean().backward()
    return {e.key: e.count for e in prof.key_averages() if e.key in ("aten::_grouped_mm", "aten::mm", "aten::matmul")}
