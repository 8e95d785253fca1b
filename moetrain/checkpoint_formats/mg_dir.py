"""Open a Megatron checkpoint directory (``--load-model-type mg``) of either format and say what it holds.

    legacy      the per-rank Megatron format (iter_*/mp_rank_*/model_optim_rng.pt), with
                <root>/latest_checkpointed_iteration.txt
    torch_dist  <root>/latest_checkpointed_iteration.txt + iter_*/{.metadata, *.distcp, moetrain.json}
                (the trainer's format), or an ``iter_*`` directory itself

The pointer file, ``iter_*`` naming and ``moetrain.json`` are checkpoint_formats/directory.py's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moetrain.checkpoint_formats.directory import META_FILE, iter_dir_name, read_meta
from moetrain.checkpoint_formats.errors import ConversionError
from moetrain.checkpoint_formats.legacy import (
    LegacyCheckpointError,
    is_legacy_checkpoint,
    read_legacy_meta,
    read_tracker,
)
from moetrain.checkpoint_formats.legacy_reader import LegacyRankReader
from moetrain.checkpoint_formats.torch_dist import TorchDistRankReader
from moetrain.models.config import ModelConfig
from moetrain.models.registry import get_flavor
from moetrain.models.weight_maps import RankCoord, ShardLayout, expected_mcore_keys

_OPTIM_KEYS = ("optimizer", "opt_param_scheduler", "rng_state")


@dataclass
class MegatronCheckpoint:
    cfg: ModelConfig
    reader: LegacyRankReader | TorchDistRankReader
    kind: str  # "legacy" (the per-rank Megatron format) | "torch_dist"

    def _optimizer_count(self) -> tuple[int, str]:
        if isinstance(self.reader, LegacyRankReader):
            return self.reader.optimizer_ranks, "rank files"
        return len(self.reader.optimizer_keys), "tensors"

    def optimizer_note(self, keep: bool) -> str:
        n, unit = self._optimizer_count()
        if not n:
            return "none in the source"
        return f"kept (copied from {n} {unit})" if keep else f"dropped ({n} {unit} held it; --keep-optimizer keeps it)"

    def optimizer_extra(self, target: ShardLayout) -> Callable[[RankCoord], dict] | None:
        """Per-rank optimizer entries to copy; only possible when the layout is unchanged."""
        n, _ = self._optimizer_count()
        if not n:
            return None
        if self.kind != "legacy" or target != self.reader.layout:
            raise ConversionError("--keep-optimizer: optimizer state can only be copied to the same layout from a "
                                  "checkpoint in the per-rank Megatron format (iter_*/mp_rank_*/model_optim_rng.pt); "
                                  "re-sharding it is not supported. Use --drop-optimizer, or "
                                  "load the trainer's torch_dist checkpoint with the new layout (it re-shards on load)")
        reader = self.reader

        def extra(coord: RankCoord) -> dict:
            blob = reader.rank_blob(coord)
            return {k: blob[k] for k in _OPTIM_KEYS if k in blob}

        return extra


def torch_dist_dir(load_dir: Path) -> Path | None:
    if (load_dir / ".metadata").is_file():
        return load_dir
    try:
        iteration = read_tracker(load_dir)
    except LegacyCheckpointError:
        return None
    d = load_dir / iter_dir_name(iteration)
    return d if (d / ".metadata").is_file() else None


def open_megatron(load_dir: Path, flavor: str | None) -> MegatronCheckpoint:
    try:
        if is_legacy_checkpoint(load_dir):
            meta = read_legacy_meta(load_dir)
            cfg = ModelConfig.from_dict(meta.model_config)
            reader = LegacyRankReader(meta)
            return MegatronCheckpoint(cfg, reader, "legacy")
    except LegacyCheckpointError as e:
        raise ConversionError(str(e)) from None
    ckpt = torch_dist_dir(load_dir)
    if ckpt is None:
        raise ConversionError(f"--load-dir {load_dir}: neither the per-rank Megatron format "
                              f"(iter_*/mp_rank_*/model_optim_rng.pt) nor a dist-checkpoint (.metadata)")
    meta = read_meta(ckpt)
    if meta is not None:
        cfg = ModelConfig.from_dict(meta["model_config"])
    elif flavor:
        cfg = get_flavor(flavor)
    else:
        raise ConversionError(f"{ckpt}: no {META_FILE}; give the architecture with --model <flavor>")
    probe = TorchDistRankReader(ckpt, padded_vocab_size=cfg.vocab_size)
    emb = probe.tensors.get("embedding.word_embeddings.weight")
    if emb is None:
        raise ConversionError(f"tensor 'embedding.word_embeddings.weight' is missing from {ckpt}")
    reader = TorchDistRankReader(ckpt, padded_vocab_size=int(emb.size[0]))
    reader.index(expected_mcore_keys(cfg, reader.layout, RankCoord(0, 0, 0)))
    return MegatronCheckpoint(cfg, reader, "torch_dist")
