"""The per-rank Megatron format (iter_*/mp_rank_*/model_optim_rng.pt): Megatron-LM's classic
checkpoint layout, what ModelLink's converter writes (this module's name, "legacy", is one of its aliases).

    <root>/latest_checkpointed_iteration.txt      "release" or the iteration number
    <root>/iter_0000001/                          (``release/`` when the tracker says "release")
        mp_rank_{tp:02d}[_{pp:03d}][_{ep:03d}]/model_optim_rng.pt

The pointer file and the ``iter_*`` naming are checkpoint_formats/directory.py's, shared with the
trainer's torch_dist checkpoints. Megatron adds the ``_{pp:03d}`` part only when PP > 1 and the
``_{ep:03d}`` part only when EP > 1; readers here accept both spellings. Each file is a plain dict of
tensors and built-in types (loadable with ``weights_only=True``): ``model`` is the rank's local
megatron-core state dict, ``checkpoint_version`` / ``iteration`` follow Megatron-LM, and ``moetrain``
holds the ModelConfig dict and the shard layout, so a reader needs no flags to interpret it.
Megatron-LM also pickles an ``args`` Namespace, which ``weights_only`` refuses; it is deliberately
not written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from moetrain.checkpoint_formats.directory import TRACKER_FILE, iter_dir_name, read_latest
from moetrain.models.common.weight_map import RankCoord, ShardLayout

RANK_FILE = "model_optim_rng.pt"
CHECKPOINT_VERSION = 3.0  # Megatron-LM's current value; readers only compare it to older versions


class LegacyCheckpointError(ValueError):
    """A missing, incomplete or inconsistent checkpoint in the per-rank Megatron format (the message
    names the path)."""


@dataclass(frozen=True)
class LegacyMeta:
    """What a reader needs to interpret every rank file: model, layout and where the files are."""

    model_config: dict
    layout: ShardLayout
    iteration: int | str  # an int, or "release"
    iter_dir: Path
    params_dtype: str | None = None
    has_optimizer: bool = False


def layout_to_dict(layout: ShardLayout) -> dict:
    return {"tp": layout.tp, "pp": layout.pp, "ep": layout.ep,
            "num_layer_list": list(layout.num_layer_list) if layout.num_layer_list else None,
            "padded_vocab_size": layout.padded_vocab_size}


def layout_from_dict(d: dict) -> ShardLayout:
    nll = d.get("num_layer_list")
    return ShardLayout(tp=int(d["tp"]), pp=int(d["pp"]), ep=int(d.get("ep", 1)),
                       num_layer_list=tuple(nll) if nll else None, padded_vocab_size=d.get("padded_vocab_size"))


def rank_dir_name(coord: RankCoord, layout: ShardLayout) -> str:
    name = f"mp_rank_{coord.tp_rank:02d}"
    if layout.pp > 1:
        name += f"_{coord.pp_rank:03d}"
    if layout.ep > 1:
        name += f"_{coord.ep_rank:03d}"
    return name


def rank_file(iter_dir: str | Path, coord: RankCoord, layout: ShardLayout) -> Path:
    path = Path(iter_dir) / rank_dir_name(coord, layout) / RANK_FILE
    if not path.is_file():  # Megatron versions differ on when the pp / ep suffixes appear
        full = Path(iter_dir) / f"mp_rank_{coord.tp_rank:02d}_{coord.pp_rank:03d}_{coord.ep_rank:03d}" / RANK_FILE
        if full.is_file():
            return full
    return path


def read_tracker(root: str | Path) -> int | str:
    iteration = read_latest(root, allow_release=True, error=LegacyCheckpointError)
    if iteration is None:
        raise LegacyCheckpointError(f"{root}: no {TRACKER_FILE}; not a Megatron checkpoint directory")
    return iteration


def is_legacy_checkpoint(load_dir: str | Path) -> bool:
    """True when ``load_dir`` is in the per-rank Megatron format (``mp_rank_*``), not a dist-checkpoint."""
    try:
        iteration = read_tracker(load_dir)
    except LegacyCheckpointError:
        return False
    iter_dir = Path(load_dir) / iter_dir_name(iteration)
    return iter_dir.is_dir() and any(p.is_dir() and p.name.startswith("mp_rank_") for p in iter_dir.iterdir())


def _load(path: Path) -> dict:
    if not path.is_file():
        raise LegacyCheckpointError(f"missing rank file {path}")
    try:  # mmap: tensors stay on disk until touched, so opening a rank file costs no memory
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt or foreign file: one line naming it
        raise LegacyCheckpointError(f"cannot read {path}: {type(e).__name__}: {e}") from None


def read_legacy_meta(load_dir: str | Path) -> LegacyMeta:
    """The moetrain metadata of a per-rank checkpoint (read from rank (0, 0, 0)'s file)."""
    iteration = read_tracker(load_dir)
    iter_dir = Path(load_dir) / iter_dir_name(iteration)
    if not iter_dir.is_dir():
        raise LegacyCheckpointError(f"{load_dir}: the tracker names {iteration!r} but {iter_dir} does not exist")
    first = sorted(p for p in iter_dir.glob("mp_rank_*/" + RANK_FILE))
    if not first:
        raise LegacyCheckpointError(f"{iter_dir}: no mp_rank_*/{RANK_FILE} files")
    blob = _load(first[0])
    meta = blob.get("moetrain")
    if not isinstance(meta, dict) or "model_config" not in meta or "layout" not in meta:
        raise LegacyCheckpointError(f"{first[0]}: no moetrain metadata (model_config, layout); it was not "
                                    f"written by moetrain, give the model with --model and the layout flags")
    return LegacyMeta(model_config=meta["model_config"], layout=layout_from_dict(meta["layout"]),
                      iteration=iteration, iter_dir=iter_dir, params_dtype=meta.get("params_dtype"),
                      has_optimizer="optimizer" in blob)


def save_rank_checkpoint(save_dir: str | Path, coord: RankCoord, layout: ShardLayout, state_dict: dict,
                         model_config: dict, iteration: int | str = 1, params_dtype: str | None = None,
                         extra: dict | None = None) -> Path:
    """Write one rank's ``model_optim_rng.pt`` under ``save_dir/iter_*/mp_rank_*``; returns the file.

    The tracker file is not written here: the caller writes it (``directory.write_latest``) once every
    rank is on disk.
    """
    path = Path(save_dir) / iter_dir_name(iteration) / rank_dir_name(coord, layout) / RANK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"model": state_dict, "checkpoint_version": CHECKPOINT_VERSION,
            "iteration": 0 if iteration == "release" else int(iteration),
            "moetrain": {"model_config": model_config, "layout": layout_to_dict(layout),
                         "rank": [coord.tp_rank, coord.pp_rank, coord.ep_rank], "params_dtype": params_dtype}}
    blob.update(extra or {})
    torch.save(blob, path)
    return path


def load_rank_state_dict(load_dir: str | Path, coord: RankCoord, layout: ShardLayout | None = None
                         ) -> tuple[dict[str, torch.Tensor], LegacyMeta]:
    """The local state dict of rank ``coord`` (memory-mapped) and the checkpoint's metadata.

    ``layout`` is the run's layout: when given and different from the checkpoint's, this raises
    with the command that re-shards the checkpoint (convert_ckpt.py mg -> mg).
    """
    meta = read_legacy_meta(load_dir)
    if layout is not None and layout != meta.layout:
        raise LegacyCheckpointError(
            f"checkpoint {load_dir} is sharded as {_describe(meta.layout)} but this run uses {_describe(layout)}; "
            f"re-shard it first: python ckpt_converters/convert_ckpt.py --load-model-type mg --save-model-type mg "
            f"--load-dir {load_dir} --save-dir <new dir> --target-tensor-parallel-size {layout.tp} "
            f"--target-pipeline-parallel-size {layout.pp} --target-expert-parallel-size {layout.ep}"
            + (f" --num-layer-list {','.join(map(str, layout.num_layer_list))}" if layout.num_layer_list else ""))
    path = rank_file(meta.iter_dir, coord, meta.layout)
    blob = _load(path)
    if not isinstance(blob.get("model"), dict):
        raise LegacyCheckpointError(f"{path}: no 'model' state dict")
    return blob["model"], meta


def open_rank_file(iter_dir: str | Path, coord: RankCoord, layout: ShardLayout) -> tuple[dict, Path]:
    """(whole memory-mapped blob, path) of one rank file, for converters that also need the optimizer."""
    path = rank_file(iter_dir, coord, layout)
    return _load(path), path


def _describe(layout: ShardLayout) -> str:
    s = f"TP{layout.tp} PP{layout.pp} EP{layout.ep}"
    if layout.num_layer_list:
        s += f" num_layer_list {','.join(map(str, layout.num_layer_list))}"
    if layout.padded_vocab_size:
        s += f" padded vocab {layout.padded_vocab_size}"
    return s
