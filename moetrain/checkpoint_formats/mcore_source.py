"""A Megatron checkpoint seen as a getter of full HF-named tensors.

``MegatronSource.get("model.layers.3.self_attn.q_proj.weight")`` reads the local pieces of that
tensor from the rank files that hold it (all TP ranks of the layer's pipeline stage; one EP rank
for an expert), un-shards them with the weight map's rules and returns the HF tensor. mg -> hf
writes those tensors; mg -> mg feeds the same getter to ``hf_to_mcore`` for the target layout, so
re-sharding is HF-shaped in the middle and exact (no arithmetic, only copies).

Rank readers (the per-rank Megatron format, torch_dist directories) only list and return *local*
megatron-core tensors; the checks here are format-independent: before anything is read, every
rank's tensors must be exactly the ones the layout predicts, with the predicted shapes.
Replicas (a replicated tensor on TP ranks > 0, a non-expert tensor on EP ranks > 0, the tied
output-layer copy on the last stage) are listed, checked for shape and counted, but not read.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from moetrain.checkpoint_formats.errors import ConversionError
from moetrain.checkpoint_formats.hf_dir import TensorInfo
from moetrain.models.common.weight_map import BoundTensor, hf_shape, model_dims, unshard
from moetrain.models.config import ModelConfig
from moetrain.models.weight_maps import RankCoord, ShardLayout, all_coords, bound_tensors, expected_mcore_keys


class RankReader(Protocol):
    layout: ShardLayout

    def inventory(self, coord: RankCoord) -> dict[str, tuple[tuple[int, ...], torch.dtype]]: ...
    def where(self, coord: RankCoord) -> str: ...
    def tensor(self, coord: RankCoord, name: str) -> torch.Tensor: ...
    def release(self) -> None: ...


@dataclass(frozen=True)
class _Entry:
    bound: BoundTensor
    pp: int
    ep: int
    index: int  # which of the rule's HF tensors

    @property
    def by_tp(self) -> bool:
        rule = self.bound.rule
        return rule.kind != "replicated" and (rule.kind != "gated_fc1" or rule.tp_split)


def _validate(cfg: ModelConfig, reader: RankReader) -> int:
    """Every rank holds exactly the predicted tensors; returns the number of tensors listed."""
    total = 0
    for coord in all_coords(reader.layout):
        expected = expected_mcore_keys(cfg, reader.layout, coord)
        found = reader.inventory(coord)
        where = reader.where(coord)
        for name, (shape, _) in found.items():
            if name not in expected:
                raise ConversionError(f"tensor {name!r} in {where} maps to no HF tensor")
            if tuple(shape) != tuple(expected[name]):
                raise ConversionError(f"tensor {name!r} in {where}: shape {tuple(shape)} contradicts the config "
                                      f"(expected {tuple(expected[name])})")
        missing = sorted(set(expected) - set(found))
        if missing:
            raise ConversionError(f"tensor {missing[0]!r} is missing from {where} ({len(missing)} missing)")
        total += len(found)
    return total


class MegatronSource:
    """Getter of HF tensors over any rank reader; counts what it reads."""

    def __init__(self, cfg: ModelConfig, reader: RankReader) -> None:
        self.cfg, self.reader, self.layout = cfg, reader, reader.layout
        self.tensors_listed = _validate(cfg, reader)
        dims = model_dims(cfg)
        self._entries: dict[str, _Entry] = {}
        self.infos: dict[str, TensorInfo] = {}
        for coord in all_coords(self.layout):
            if coord.tp_rank:
                continue
            for b in bound_tensors(cfg, self.layout, coord):
                if b.rule.tied_copy or (coord.ep_rank > 0 and b.rule.scope != "expert"):
                    continue  # replicas: the same bytes are read from another rank
                dtype = reader.inventory(coord)[b.mcore][1]
                for i, name in enumerate(b.hf):
                    self._entries[name] = _Entry(b, coord.pp_rank, coord.ep_rank, i)
                    self.infos[name] = TensorInfo(name, hf_shape(b.rule, i, dims), dtype, reader.where(coord))
        self._needed = {(RankCoord(t, e.pp, e.ep), e.bound.mcore) for e in self._entries.values()
                        for t in (range(self.layout.tp) if e.by_tp else [0])}
        self._read: set[tuple[RankCoord, str]] = set()
        self._cache: dict[str, torch.Tensor] = {}  # the other outputs of a multi-output rule (q, k, v)
        self.bytes_read = 0
        self.tensors_read = 0

    def get(self, name: str) -> torch.Tensor:
        if name in self._cache:
            return self._cache.pop(name)
        entry = self._entries.get(name)
        if entry is None:
            raise KeyError(name)
        pieces = []
        for t in range(self.layout.tp) if entry.by_tp else [0]:
            coord = RankCoord(t, entry.pp, entry.ep)
            piece = self.reader.tensor(coord, entry.bound.mcore)
            if (coord, entry.bound.mcore) not in self._read:
                self._read.add((coord, entry.bound.mcore))
                self.bytes_read += piece.numel() * piece.element_size()
                self.tensors_read += 1
            pieces.append(piece)
        outs = unshard(entry.bound.rule, pieces, self.cfg)
        # unshard may return views of the mapped pieces: own the bytes so release() can unmap
        outs = [o if o.untyped_storage().data_ptr() not in {p.untyped_storage().data_ptr() for p in pieces}
                else o.clone() for o in outs]
        for i, (hf_name, out) in enumerate(zip(entry.bound.hf, outs)):
            if i != entry.index:
                self._cache[hf_name] = out
        return outs[entry.index]

    def release(self) -> None:
        self.reader.release()

    def replicas_skipped(self) -> int:
        return self.tensors_listed - len(self._needed)

    def check_all_read(self) -> None:
        unread = sorted(self._needed - self._read, key=lambda x: (x[0].pp_rank, x[0].ep_rank, x[0].tp_rank, x[1]))
        if unread:
            coord, name = unread[0]
            raise ConversionError(f"tensor {name!r} in {self.reader.where(coord)} was never read "
                                  f"({len(unread)} unread)")


_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def hf_order(names: Iterator[str] | list[str]) -> list[str]:
    """Embedding first, then layer by layer (map order inside a layer), then the rest: the order in
    which a reader walking pipeline stages finds them, so mapped files can be released per layer."""
    names = list(names)
    pos = {n: i for i, n in enumerate(names)}

    def key(n: str) -> tuple[int, int, int]:
        m = _LAYER.match(n)
        if m:
            return (1, int(m.group(1)), pos[n])
        return (0 if "embed" in n else 2, 0, pos[n])

    return sorted(names, key=key)


def layer_of(name: str) -> int | None:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else None
