"""Rank reader over the per-rank Megatron format (iter_*/mp_rank_*/model_optim_rng.pt), memory-mapped."""

from __future__ import annotations

import torch

from moetrain.checkpoint_formats.errors import ConversionError
from moetrain.checkpoint_formats.legacy import LegacyMeta, open_rank_file, rank_file
from moetrain.models.weight_maps import RankCoord


class LegacyRankReader:
    def __init__(self, meta: LegacyMeta) -> None:
        self.meta = meta
        self.layout = meta.layout
        self._open: dict[RankCoord, dict] = {}
        self._inventory: dict[RankCoord, dict] = {}
        self.optimizer_ranks = 0  # rank files holding optimizer state

    def rank_blob(self, coord: RankCoord) -> dict:
        """The whole (memory-mapped) rank file of ``coord``: ``model`` and, when saved, optimizer state."""
        blob = self._open.get(coord)
        if blob is None:
            blob, path = open_rank_file(self.meta.iter_dir, coord, self.layout)
            if not isinstance(blob.get("model"), dict):
                raise ConversionError(f"{path}: no 'model' state dict")
            self._open[coord] = blob
        return blob

    def where(self, coord: RankCoord) -> str:
        return str(rank_file(self.meta.iter_dir, coord, self.layout))

    def inventory(self, coord: RankCoord) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        inv = self._inventory.get(coord)
        if inv is None:
            blob = self.rank_blob(coord)
            inv = {}
            for name, t in blob["model"].items():
                if name.endswith("._extra_state"):
                    continue  # Transformer Engine / fp8 metadata: not a weight
                if not isinstance(t, torch.Tensor):
                    raise ConversionError(f"entry {name!r} in {self.where(coord)} is not a tensor")
                inv[name] = (tuple(t.shape), t.dtype)
            if blob.get("optimizer") is not None:
                self.optimizer_ranks += 1
            self._inventory[coord] = inv
        return inv

    def tensor(self, coord: RankCoord, name: str) -> torch.Tensor:
        return self.rank_blob(coord)["model"][name]

    def release(self) -> None:
        self._open.clear()

