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
import pickle
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
from moetrain.training.checkpoint_integrity import damage, record_files, resume_candidates

COMMON_FILE = "common.pt"  # megatron-core's dist-checkpoint: the non-sharded part of the state dict

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
    """Tensors and plain types only, so that loading needs no unpickling of objects."""
    from megatron.core.tensor_parallel import random as tp_random

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"random": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                   cached),
            "torch": torch.get_rng_state(), "device": tp_random._get_cuda_rng_state(),
            "tracker": tp_random.get_cuda_rng_tracker().get_states()}


def _set_rng_state(states: dict) -> None:
    from megatron.core.tensor_parallel import random as tp_random

    random.setstate(states["random"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else keys  # checkpoints before 2026-12-02: an array
    np.random.set_state((kind, keys.astype(np.uint32), pos, has_gauss, cached))
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
    error = None
    try:
        sd = _sharded_state_dict(model, optimizer, scheduler, state, save_optim, is_loading=False, part=part)
        dist_checkpointing.save(sd, str(tmp), sharded_strategy=get_default_save_sharded_strategy("torch_dist"))
        (tmp / "rng").mkdir(exist_ok=True)  # after the save: dist_checkpointing wants an empty directory
        torch.save(_rng_state(), tmp / "rng" / f"rank_{rank:05d}.pt")
    except OSError as e:  # a full disk, a quota, a vanished mount: the previous checkpoint stays as it is
        error = f"{type(e).__name__}: {e}"
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)  # every rank stops, or goes on, together
    failed = [(r, e) for r, e in enumerate(errors) if e]
    if failed:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        dist.barrier()
        raise SaveError(_save_failure(root, final, failed))
    dist.barrier()  # every shard is on disk before the checkpoint becomes visible
    files = record_files(tmp)  # size and CRC-32 of every file, checked before a load reads them
    if rank == 0:
        _finalize(root, tmp, final, {**meta, "iteration": state.iteration,
                                     "consumed_train_samples": state.consumed_train_samples, "files": files},
                  keep_last_k)
    dist.barrier()
    return final


class SaveError(RuntimeError):
    """A checkpoint could not be written; the previous one and the pointer are untouched."""


def _save_failure(root: Path, final: Path, failed: list[tuple[int, str]]) -> str:
    latest = read_latest(root)
    previous = root / iter_dir_name(latest) if latest is not None else None
    needed = sum(p.stat().st_size for p in previous.rglob("*") if p.is_file()) if previous and previous.is_dir() else None
    free = shutil.disk_usage(root).free
    rank, error = failed[0]
    need = f"about {needed:,} bytes needed (the size of {previous.name}), " if needed else ""
    kept = (f"the previous checkpoint {previous} is intact and {TRACKER_FILE} still names it" if previous
            else "no earlier checkpoint exists")
    return (f"saving {final} failed on rank {rank}{f' (and {len(failed) - 1} more)' if len(failed) > 1 else ''}: "
            f"{error}; {need}{free:,} bytes free in {root}; nothing of it was kept, {kept}")


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


def _load_model(ckpt: Path, model, optimizer, scheduler, load_optim: bool, part: str) -> dict:
    """Collective: ``part`` of the model (and the optimizer state) from one intact ``iter_*``
    directory; the loaded state dict. megatron-core unpickles ``common.pt`` with weights_only=False,
    so it is checked to hold plain values first."""
    from megatron.core import dist_checkpointing

    if (ckpt / COMMON_FILE).is_file():
        load_plain(ckpt / COMMON_FILE)
    sd = _sharded_state_dict(model, optimizer, scheduler, None, load_optim, is_loading=True, part=part)
    loaded = dist_checkpointing.load(sd, str(ckpt))
    for i, chunk in enumerate(unwrap_model_chunks(model)):
        _load_part(chunk, loaded["model" if len(model) == 1 else f"model{i}"], part)
    return loaded


def load_adapter_weights(ckpt_dir: str | Path, model) -> None:
    """An adapter checkpoint's ``iter_*`` directory into model chunks that carry the adapters
    (generation: no optimizer, any layout). Collective; a damaged checkpoint is a ConfigError."""
    ckpt = Path(ckpt_dir)
    problem = damage(ckpt)
    if problem is not None:
        raise ConfigError(f"checkpoint {ckpt} is damaged: {problem}")
    _load_model(ckpt, model, None, None, False, "adapters")


# numpy arrays in RNG files of checkpoints before 2026-12-02: data, not code, so allowed to weights_only.
_NUMPY_DATA = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


def load_plain(path: Path):
    """torch.load that never unpickles an object: tensors, plain containers and numbers only
    (weights_only). Anything else is refused by name, and nothing of it runs."""
    try:
        with torch.serialization.safe_globals(_NUMPY_DATA):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).split("WeightsUnpickler error: ")[-1].split(".")[0]
        raise ConfigError(f"{path}: refused, it holds more than tensors and plain values ({reason}); "
                          "moetrain never unpickles objects from a checkpoint") from None


def choose_checkpoint(root: Path, step: int | None = None, fallback: bool = True, say=print) -> int:
    """Collective: the iteration to load. ``step`` (--ckpt-step): exactly that one. Otherwise the
    pointer's, or, when that one is damaged, the newest intact older one (one line says so; without
    ``fallback`` a damaged one is an error). Every rank gets the same answer or the same error."""
    latest = read_latest(root)
    if latest is None:
        raise ConfigError(f"--load {root}: no {TRACKER_FILE}")
    candidates = [step] if step is not None else resume_candidates(root, latest)
    for k, iteration in enumerate(candidates):
        ckpt = root / iter_dir_name(iteration)
        problem = damage(ckpt) if ckpt.is_dir() else "the directory is missing"
        if problem is None:
            return iteration
        message = f"checkpoint {ckpt} is damaged: {problem}"
        older = root / iter_dir_name(candidates[k + 1]) if k + 1 < len(candidates) else None
        if older is not None and fallback:
            say(f"{message}; resuming from the older checkpoint {older} if it is intact "
                "(--no-checkpoint-fallback refuses instead)")
            continue
        if step is not None:
            raise ConfigError(f"--ckpt-step {step}: {message}")
        if older is None:
            raise ConfigError(f"{message}; no older checkpoint is kept to resume from")
        raise ConfigError(f"{message}; --no-checkpoint-fallback: not resuming from the older {older}")
    raise AssertionError("unreachable")


def load_checkpoint(root: str | Path, model, optimizer, scheduler, *, load_optim: bool, load_rng: bool,
                    finetune: bool, layout: dict, part: str = "all", step: int | None = None,
                    fallback: bool = True, say=print) -> TrainState:
    """Load the latest intact checkpoint of ``root`` (or ``step``'s, see :func:`choose_checkpoint`)
    into the (possibly differently sharded) model.
    ``part``: "all"; "base" (a LoRA run's base: every weight but the adapters, which stay as they
    are); "adapters" (a LoRA checkpoint into a model whose base is loaded)."""
    root = Path(root)
    iteration = choose_checkpoint(root, step, fallback, say)
    ckpt = root / iter_dir_name(iteration)
    meta = read_meta(root, iteration)
    load_optim = load_optim and not finetune and meta.get("has_optimizer", True)
    loaded = _load_model(ckpt, model, optimizer, scheduler, load_optim, part)
    # megatron-core 0.16 bug without Apex / TE: the fully_reshardable optimizer-state copy expects
    # Adam's ``step`` in the checkpoint tensors (see megatron_patches.PATCHES).
    megatron_patches.apply("distrib-optimizer-state-copy-without-step")
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
        _set_rng_state(load_plain(rng_file))
    return TrainState(iteration=int(loaded["iteration"]), consumed_train_samples=int(loaded["consumed_train_samples"]))
