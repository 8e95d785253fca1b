"""Rank reader over a megatron-core dist-checkpoint (torch_dist format), as the trainer saves it.

What megatron-core 0.16's GPTModel ``sharded_state_dict`` puts in such a directory (measured: a
tiny model saved with ``dist_checkpointing.save``; keys are global, whatever the TP/PP/EP layout):

    embedding.word_embeddings.weight                         [Vp, h]      (padded vocab)
    decoder.layers.<rest>                                    [L, ...]     all layers stacked on dim 0
    decoder.layers.mlp.experts.experts.linear_fc{1,2}.weight [L, E, ...]  SequentialMLP experts stacked
    decoder.final_layernorm.weight, output_layer.weight      (untied only: a tied output is
                                                                          saved as the embedding)
    *._extra_state/shard_*                                   bytes, not weights
    optimizer.*                                              optimizer state (when saved)

Each global tensor is the concatenation of the TP shards along the split axis, which is exactly
the local tensor of a TP1 / PP1 / EP1 model (fused QKV per query group, fc1 as [gate; up]). So this
reader presents the checkpoint as that single-rank layout, and reads one layer (one expert) slice
at a time through torch.distributed.checkpoint's storage reader: memory stays at one tensor.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem

from moetrain.checkpoint_formats.errors import ConversionError
from moetrain.models.weight_maps import RankCoord, ShardLayout

_EXPERT = re.compile(r"^decoder\.layers\.(\d+)\.mlp\.experts\.local_experts\.(\d+)\.(.+)$")
_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def global_key(local_name: str) -> tuple[str, tuple[int, ...]]:
    """TP1/PP1/EP1 local name -> (dist-checkpoint key, index into its stacked leading dims)."""
    m = _EXPERT.match(local_name)
    if m:
        return f"decoder.layers.mlp.experts.experts.{m.group(3)}", (int(m.group(1)), int(m.group(2)))
    m = _LAYER.match(local_name)
    if m:
        return f"decoder.layers.{m.group(2)}", (int(m.group(1)),)
    return local_name, ()


class _RegionPlanner(LoadPlanner):
    """Copies every read item into a slice of one destination tensor."""

    def __init__(self, out: torch.Tensor) -> None:
        self.out = out

    def set_up_planner(self, state_dict, metadata=None, is_coordinator=False) -> None:
        del state_dict, metadata, is_coordinator

    def create_local_plan(self) -> LoadPlan:
        return LoadPlan([])

    def create_global_plan(self, global_plan):
        return global_plan

    def finish_plan(self, central_plan):
        return central_plan

    def load_bytes(self, read_item, value) -> None:
        raise AssertionError("tensor reads only")

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        t = self.out
        for dim, (off, n) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
            t = t.narrow(dim, off, n)
        return t

    def commit_tensor(self, read_item, tensor) -> None:
        del read_item, tensor  # resolve_tensor handed out a view of self.out: already in place


class TorchDistRankReader:
    def __init__(self, ckpt_dir: str | Path, padded_vocab_size: int) -> None:
        self.dir = Path(ckpt_dir)
        self.layout = ShardLayout(padded_vocab_size=padded_vocab_size)
        self._storage = FileSystemReader(str(self.dir))
        try:
            self.metadata = self._storage.read_metadata()
        except Exception as e:  # noqa: BLE001 - a truncated .metadata: one line naming it
            raise ConversionError(f"cannot read dist-checkpoint metadata in {self.dir}: {e}") from None
        self._storage.set_up_storage_reader(self.metadata, True)
        self.tensors = {k: v for k, v in self.metadata.state_dict_metadata.items()
                        if isinstance(v, TensorStorageMetadata)}
        self.optimizer_keys = sorted(k for k in self.tensors if k.startswith("optimizer."))
        self._inventory: dict[str, tuple[tuple[int, ...], torch.dtype]] | None = None

    def where(self, coord: RankCoord) -> str:
        del coord
        return str(self.dir)

    def model_keys(self) -> list[str]:
        return sorted(k for k in self.tensors if not k.startswith("optimizer.") and "._extra_state" not in k)

    def inventory(self, coord: RankCoord, expected: dict | None = None) -> dict:
        del coord
        if self._inventory is None:
            raise AssertionError("call index(expected local names) first")
        return self._inventory

    def index(self, expected_local: dict[str, tuple[int, ...]]) -> None:
        """Map the expected TP1 local names onto the stored keys; unknown stored keys are an error."""
        inv, used = {}, set()
        for name in expected_local:
            key, idx = global_key(name)
            md = self.tensors.get(key)
            if md is None:
                continue  # reported as missing by the format-independent check
            used.add(key)
            size = tuple(md.size)
            if len(size) < len(idx) or any(i >= s for i, s in zip(idx, size)):
                raise ConversionError(f"tensor {key!r} in {self.dir}: shape {size} has no slice {idx} "
                                      f"(the config predicts more layers or experts)")
            inv[name] = (size[len(idx):], md.properties.dtype)
        unknown = sorted(set(self.model_keys()) - used)
        if unknown:
            raise ConversionError(f"tensor {unknown[0]!r} in {self.dir} maps to no HF tensor")
        self._inventory = inv

    def tensor(self, coord: RankCoord, name: str) -> torch.Tensor:
        del coord
        key, idx = global_key(name)
        md = self.tensors[key]
        size = tuple(md.size)
        k = len(idx)
        region_off = (*idx, *([0] * (len(size) - k)))
        region_size = (*([1] * k), *size[k:])
        out = torch.empty(region_size, dtype=md.properties.dtype)
        items = []
        for chunk in md.chunks:
            lo = [max(c, r) for c, r in zip(chunk.offsets, region_off)]
            hi = [min(c + s, r + n) for c, s, r, n in zip(chunk.offsets, chunk.sizes, region_off, region_size)]
            if any(a >= b for a, b in zip(lo, hi)):
                continue
            items.append(ReadItem(type=LoadItemType.TENSOR, dest_index=MetadataIndex(key, region_off),
                                  dest_offsets=torch.Size(a - r for a, r in zip(lo, region_off)),
                                  storage_index=MetadataIndex(key, chunk.offsets),
                                  storage_offsets=torch.Size(a - c for a, c in zip(lo, chunk.offsets)),
                                  lengths=torch.Size(b - a for a, b in zip(lo, hi))))
        covered = sum(int(torch.Size(i.lengths).numel()) for i in items)
        if covered != out.numel():
            raise ConversionError(f"tensor {key!r} slice {idx} in {self.dir}: stored chunks cover {covered} of "
                                  f"{out.numel()} elements")
        self._storage.read_data(LoadPlan(items), _RegionPlanner(out)).wait()
        return out.reshape(size[k:])

    def release(self) -> None:
        pass  # nothing stays mapped: each read opens, reads and closes its chunk
