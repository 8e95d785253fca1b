"""Write sharded safetensors (+ ``model.safetensors.index.json``) one tensor at a time.

The whole output is planned up front (names, shapes, dtypes, in the order they will be produced),
so each shard's header is known before its first tensor arrives: a tensor's bytes go straight to
disk and are dropped. Peak memory is one tensor, not one shard. File names and the index follow
``save_pretrained`` (``model-00001-of-00003.safetensors``; a single ``model.safetensors`` when
everything fits in one shard).

safetensors file format: 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`` padded with
spaces to a multiple of 8, then the tensors' bytes back to back in header order.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from moetrain.checkpoint_formats.errors import ConversionError
from moetrain.checkpoint_formats.hf_dir import SAFETENSORS_DTYPES

DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
INDEX_FILE = "model.safetensors.index.json"


def parse_size(text: str | int) -> int:
    """'5GB' / '500MB' / '2GiB' / bytes -> bytes (GB = 10**9 as transformers counts)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ConversionError(f"--max-shard-size {text!r}: expected a size like 5GB, 500MB or a byte count")
    unit = (m.group(2) or "B").upper()
    base = 1024 if "I" in unit else 1000
    power = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit[0]]
    return int(float(m.group(1)) * base ** power)


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _split(plan: list[PlannedTensor], max_bytes: int) -> list[list[PlannedTensor]]:
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for t in plan:
        if shards[-1] and size + t.nbytes > max_bytes:  # a tensor larger than the limit gets its own shard
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


class StreamingSafetensorsWriter:
    """``add`` tensors in plan order; ``finish`` checks that every planned tensor was written."""

    def __init__(self, out_dir: str | Path, plan: list[PlannedTensor], max_shard_bytes: int,
                 file_stem: str = "model") -> None:
        """``file_stem``: "model" for a model (model.safetensors / model-00001-of-00002.safetensors),
        "adapter_model" for a PEFT adapter."""
        self.dir = Path(out_dir)
        self.stem = file_stem
        names = [t.name for t in plan]
        if len(set(names)) != len(names):
            raise ConversionError("output plan names a tensor twice")
        self.shards = _split(plan, max_shard_bytes)
        n = len(self.shards)
        self.files = [f"{file_stem}.safetensors"] if n == 1 else [
            f"{file_stem}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self._queue = [(s, t) for s, shard in enumerate(self.shards) for t in shard]
        self._pos = 0
        self._file = None
        self._shard = -1
        self.bytes_written = 0
        self.tensors_written = 0

    def _open_shard(self, s: int) -> None:
        self._close()
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for t in self.shards[s]:
            header[t.name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                              "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._file = open(self.dir / self.files[s], "wb")
        self._file.write(struct.pack("<Q", len(raw)))
        self._file.write(raw)
        self._shard = s

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if self._pos >= len(self._queue):
            raise ConversionError(f"tensor {name!r} was produced but is not in the output plan")
        s, planned = self._queue[self._pos]
        if name != planned.name:
            raise ConversionError(f"tensor {name!r} produced out of order (expected {planned.name!r})")
        if tuple(tensor.shape) != planned.shape or tensor.dtype != planned.dtype:
            raise ConversionError(f"tensor {name!r}: produced {tuple(tensor.shape)} {tensor.dtype}, planned "
                                  f"{planned.shape} {planned.dtype}")
        if s != self._shard:
            self._open_shard(s)
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        self._file.write(memoryview(data.numpy()))
        self._pos += 1
        self.bytes_written += planned.nbytes
        self.tensors_written += 1

    def finish(self) -> None:
        self._close()
        if self._pos != len(self._queue):
            raise ConversionError(f"tensor {self._queue[self._pos][1].name!r} was never written "
                                  f"({len(self._queue) - self._pos} missing)")
        if len(self.files) > 1:
            weight_map = {t.name: self.files[s] for s, shard in enumerate(self.shards) for t in shard}
            total = sum(t.nbytes for shard in self.shards for t in shard)
            index = INDEX_FILE if self.stem == "model" else f"{self.stem}.safetensors.index.json"
            (self.dir / index).write_text(json.dumps({"metadata": {"total_size": total},
                                                           "weight_map": weight_map}, indent=2) + "\n")

    def abort(self) -> None:
        self._close()
