"""Atomic, reshardable checkpoints on megatron-core's ``dist_checkpointing`` (torch_dist format).

Layout under ``--save``::

    iter_0000010/                   dist-checkpoint dir (model + optimizer shards, common.pt)
        moetrain.json               ModelConfig, layout, iteration, consumed samples, args
        rng/rank_00000.pt           per-rank RNG states (python, numpy, torch, device, tracker)
    latest_checkpointed_iteration.txt

Atomicity: every rank writes into ``.tmp_iter_0000010``; only when all shards are on disk does
rank 0 add ``moetrain.json``, rename the directory into place and then replace the pointer file
(write + fsync + ``os.replace`` + fsync of the directory). A save interrupted at any point therefore
leaves the pointer on the previous, complete checkpoint. Model and optimizer state are ShardedTensors
keyed by their global (unsharded) identity, so a checkpoint loads into another TP / PP / EP / DP
layout; the distributed optimizer uses the ``fully_sharded_model_space`` format for the same reason.
The pointer, the ``iter_*`` naming and ``moetrain.json`` are checkpoint_formats/directory.py's,
shared with the per-rank Megatron format (iter_*/mp_rank_*/model_optim_rng.pt) the converter writes.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from moetrain import megatron_patches
from moetrain.checkpoint_formats import directory

# read_latest(root): the pointer's iteration, None when there is none (ConfigError on anything else,
# "release" included). These names are part of this module's interface (validate.py, tests).
from moetrain.checkpoint_formats.directory import META_FILE, TRACKER_FILE, iter_dir_name, read_latest
from moetrain.config import ConfigError
from moetrain.models.config import ModelConfig

# Fields that do not change the shape or meaning of the weights (training-time choices).
NON_ARCH_FIELDS = {"name", "seq_length", "hf_architecture", "published_params", "extra", "moe_aux_loss_coeff",
                   "moe_z_loss_coeff", "moe_expert_capacity_factor"}
# Sharding metadata for model and optimizer sharded state dicts (the same on save and load).
SHARDING_METADATA = {"singleton_local_shards": False, "chained_optim_avoid_prefix": True,
                     "distrib_optim_sharding_type": "fully_reshardable"}


@dataclass
class TrainState:
    iteration: int = 0
    consumed_train_samples: int = 0


def read_meta(root: str | Path, iteration: int) -> dict:
    ckpt = Path(root) / iter_dir_name(iteration)
    meta = directory.read_meta(ckpt)
    if meta is None:
        raise ConfigError(f"checkpoint {ckpt} has no {META_FILE}; it was not written by moetrain-pretrain")
    return meta


def check_compatible(saved_model: dict, model: ModelConfig, where: str) -> None:
    """Fail with one message listing every architecture field that differs."""
    current = model.to_dict()
    diffs = [f"{k}: checkpoint {saved_model.get(k)!r} vs run {current[k]!r}"
             for k in sorted(current) if k not in NON_ARCH_FIELDS and saved_model.get(k) != current[k]]
    if diffs:
        raise ConfigError(f"checkpoint {where} was saved from an incompatible model "
                          f"({saved_model.get('name')!r} vs --model {model.name!r}):\n  - " + "\n  - ".join(diffs))


# ---------------------------------------------------------------- state dicts
def unwrap_model_chunks(model) -> list:
    """The bare GPTModels under DDP / Float16Module: checkpoint keys are theirs (Megatron-LM does
    the same), so a checkpoint does not depend on the wrappers used to train."""
    bare = []
    for chunk in model:
        while hasattr(chunk, "module"):
            chunk = chunk.module
        bare.append(chunk)
    return bare


def _init_empty_optimizer_states(optimizer) -> None:
    """A fresh DistributedOptimizer has no Adam state yet, and its ``sharded_state_dict`` (needed to
    *load* one) asserts on the missing ``step`` without Apex / TE. Create the states with one
    zero-gradient step at lr 0 (no parameter moves); loading then overwrites them."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if isinstance(opt, DistributedOptimizer) and not opt.optimizer.state:
            lrs = [group["lr"] for group in opt.optimizer.param_groups]
            for group in opt.optimizer.param_groups:
                group["lr"] = 0.0
            opt._init_optimizer_states_with_dummy_values()
            for group, lr in zip(opt.optimizer.param_groups, lrs):
                group["lr"] = lr


def _unshare_adam_steps(optimizer) -> None:
    """megatron-core 0.16 without Apex / TE gives every param of a DistributedOptimizer the *same*
    ``step`` tensor on load; torch Adam increments it in place once per param, so the bias
    correction would run ahead (measured: resumed losses drifted). One tensor per param fixes it."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if isinstance(opt, DistributedOptimizer):
            for state in opt.optimizer.state.values():
                if torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].clone()


# Model parts a checkpoint may hold: everything, the base model without adapters, or the adapters
# only (a LoRA run saves those; its base comes from --load). Adapters are the modules whose name
# ends in ADAPTER_SUFFIX (moetrain.finetune.lora.apply puts ``linear_qkv_lora`` next to ``linear_qkv``).
ADAPTER_SUFFIX = "_lora"


def is_adapter_key(key: str) -> bool:
    return any(part.endswith(ADAPTER_SUFFIX) for part in key.split("."))


def _trained_whole(value) -> bool:
    """A base weight a LoRA run trains whole (the router with ``--lora-target-modules router``):
    saved with the adapters, and loaded from the base first."""
    return bool(getattr(getattr(value, "data", None), "requires_grad", False))


def _model_part(sd: dict, part: str) -> dict:
    if part == "all":
        return sd
    if part == "adapters":
        return {k: v for k, v in sd.items() if is_adapter_key(k) or _trained_whole(v)}
    return {k: v for k, v in sd.items() if not is_adapter_key(k)}


def _sharded_state_dict(model, optimizer, scheduler, state: TrainState | None, with_optim: bool,
                        is_loading: bool, part: str = "all") -> dict:
    model = unwrap_model_chunks(model)
    # A fresh copy per call: megatron-core stores the current data-parallel group into the metadata
    # dict in place (ensure_metadata_has_dp_cp_group), and a process that builds another layout
    # (tests, a planner measurement) would otherwise reuse a stale group for replica ids.
    metadata = dict(SHARDING_METADATA)
    sd: dict = {}
    if len(model) == 1:
        sd["model"] = _model_part(model[0].sharded_state_dict(metadata=metadata), part)
    else:
        for i, chunk in enumerate(model):
            sd[f"model{i}"] = _model_part(chunk.sharded_state_dict(metadata=metadata), part)
    if with_optim and optimizer is not None:
        if is_loading:
            _init_empty_optimizer_states(optimizer)
        sd["optimizer"] = optimizer.sharded_state_dict(sd, is_loading=is_loading, metadata=metadata)
        sd["opt_param_scheduler"] = scheduler.state_dict()
    if state is not None:
        sd["iteration"] = state.iteration
        sd["consumed_train_samples"] = state.consumed_train_samples
    return sd


def _rng_state() -> dict:
    from megatron.core.tensor_parallel import random as tp_random

    return {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "device": tp_random._get_cuda_rng_state(), "tracker": tp_random.get_cuda_rng_tracker().get_states()}


def _set_rng_state(states: dict) -> None:
    from megatron.core.tensor_parallel import random as tp_random

    random.setstate(states["random"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    tp_random._set_cuda_rng_state(states["device"])
    tp_random.get_cuda_rng_tracker().set_states(states["tracker"])


# ---------------------------------------------------------------- save
def save_checkpoint(root: str | Path, state: TrainState, model, optimizer, scheduler, meta: dict,
                    save_optim: bool = True, keep_last_k: int | None = None, part: str = "all") -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory. ``part``: "all", or
    "adapters" (a LoRA run: the adapters and their optimizer state only)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy

    root = Path(root)
    rank = dist.get_rank()
    final = root / iter_dir_name(state.iteration)
    tmp = root / f".tmp_{final.name}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    sd = _sharded_state_dict(model, optimizer, scheduler, state, save_optim, is_loading=False, part=part)
    dist_checkpointing.save(sd, str(tmp), sharded_strategy=get_default_save_sharded_strategy("torch_dist"))
    (tmp / "rng").mkdir(exist_ok=True)  # after the save: dist_checkpointing wants an empty directory
    torch.save(_rng_state(), tmp / "rng" / f"rank_{rank:05d}.pt")
    dist.barrier()  # every shard is on disk before the checkpoint becomes visible
    if rank == 0:
        _finalize(root, tmp, final, {**meta, "iteration": state.iteration,
                                     "consumed_train_samples": state.consumed_train_samples}, keep_last_k)
    dist.barrier()
    return final


def _finalize(root: Path, tmp: Path, final: Path, meta: dict, keep_last_k: int | None) -> None:
    """Rank 0: make a fully written temp dir the checkpoint, then move the pointer (last)."""
    directory.write_meta(tmp, meta)
    if final.exists():  # re-saving an iteration: never leave a moment with neither copy on disk
        old = root / f".old_{final.name}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    directory.write_latest(root, meta["iteration"])
    _prune(root, keep_last_k)


def _prune(root: Path, keep_last_k: int | None) -> None:
    for stale in root.glob(".tmp_iter_*"):  # left by interrupted saves
        shutil.rmtree(stale, ignore_errors=True)
    if keep_last_k is None:
        return
    kept = sorted(root.glob("iter_[0-9]*"))
    latest = read_latest(root)
    for old in kept[:-keep_last_k]:
        if old.name != iter_dir_name(latest):
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- load
def missing_in_part(missing: list[str], part: str) -> list[str]:
    """The keys of ``missing`` (from ``load_state_dict(strict=False)``) that ``part`` should have
    held: never ``_extra_state``, and for "base" / "adapters" only that part's keys."""
    return [k for k in missing if not k.endswith("_extra_state")
            and (part == "all" or is_adapter_key(k) == (part == "adapters"))]


def _load_part(chunk, state: dict, part: str) -> None:
    """load_state_dict, strict about the part loaded and ignoring the other part's keys."""
    if part == "all":
        chunk.load_state_dict(state, strict=True)
        return
    missing, unexpected = chunk.load_state_dict(state, strict=False)
    missing = missing_in_part(missing, part)
    if missing or unexpected:
        raise ConfigError(f"checkpoint does not fit the model ({part}): missing {missing[:5]}, "
                          f"unexpected {list(unexpected)[:5]}")


def load_adapter_weights(ckpt_dir: str | Path, model) -> None:
    """An adapter checkpoint's ``iter_*`` directory into model chunks that carry the adapters
    (generation: no optimizer, any layout). Collective."""
    from megatron.core import dist_checkpointing

    sd = _sharded_state_dict(model, None, None, None, False, is_loading=True, part="adapters")
    loaded = dist_checkpointing.load(sd, str(ckpt_dir))
    for i, chunk in enumerate(unwrap_model_chunks(model)):
        _load_part(chunk, loaded["model" if len(model) == 1 else f"model{i}"], "adapters")


def load_checkpoint(root: str | Path, model, optimizer, scheduler, *, load_optim: bool, load_rng: bool,
                    finetune: bool, layout: dict, part: str = "all") -> TrainState:
    """Load the latest checkpoint of ``root`` into the (possibly differently sharded) model.
    ``part``: "all"; "base" (a LoRA run's base: every weight but the adapters, which stay as they
    are); "adapters" (a LoRA checkpoint into a model whose base is loaded)."""
    from megatron.core import dist_checkpointing

    root = Path(root)
    iteration = read_latest(root)
    if iteration is None:
        raise ConfigError(f"--load {root}: no {TRACKER_FILE}")
    ckpt = root / iter_dir_name(iteration)
    meta = read_meta(root, iteration)
    load_optim = load_optim and not finetune and meta.get("has_optimizer", True)
    sd = _sharded_state_dict(model, optimizer, scheduler, None, load_optim, is_loading=True, part=part)
    loaded = dist_checkpointing.load(sd, str(ckpt))
    # megatron-core 0.16 bug without Apex / TE: the fully_reshardable optimizer-state copy expects
    # Adam's ``step`` in the checkpoint tensors (see megatron_patches.PATCHES).
    megatron_patches.apply("distrib-optimizer-state-copy-without-step")
    for i, chunk in enumerate(unwrap_model_chunks(model)):
        _load_part(chunk, loaded["model" if len(model) == 1 else f"model{i}"], part)
    if load_optim:
        optimizer.load_state_dict(loaded["optimizer"])
        _unshare_adam_steps(optimizer)
        scheduler.load_state_dict(loaded["opt_param_scheduler"])
    elif optimizer is not None:
        optimizer.reload_model_params()  # main (fp32) copies follow the loaded weights
    if finetune:
        return TrainState()
    rng_file = ckpt / "rng" / f"rank_{dist.get_rank():05d}.pt"
    if load_rng and meta.get("layout") == layout and rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return TrainState(iteration=int(loaded["iteration"]), consumed_train_samples=int(loaded["consumed_train_samples"]))
