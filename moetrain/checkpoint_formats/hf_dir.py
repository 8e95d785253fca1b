"""Read a Hugging Face checkpoint directory tensor by tensor, without loading it whole.

Accepted layouts: ``model.safetensors`` or sharded safetensors with ``model.safetensors.index.json``;
``pytorch_model.bin`` or sharded ``.bin`` with ``pytorch_model.bin.index.json``. safetensors files
are opened with ``safe_open`` (memory-mapped: a tensor's bytes are read when it is asked for);
``.bin`` files with ``torch.load(mmap=True, weights_only=True)``, which maps the storages and never
unpickles arbitrary objects. The inventory (name, shape, dtype, file) is read from headers alone,
so a whole checkpoint is validated before any tensor data is read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from moetrain.checkpoint_formats.errors import ConversionError

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: str  # where it lives, for error messages

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _weight_files(hf_dir: Path) -> tuple[list[Path], dict[str, str] | None]:
    """(files, weight_map from the index or None)."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = hf_dir / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise ConversionError(f"{index}: not a valid index ({type(e).__name__}: {e})") from None
            files = sorted({hf_dir / f for f in weight_map.values()})
            for f in files:
                if not f.is_file():
                    raise ConversionError(f"missing shard file {f} (listed in {index_name})")
            return files, weight_map
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (hf_dir / single).is_file():
            return [hf_dir / single], None
    raise ConversionError(f"{hf_dir}: no model.safetensors(.index.json) or pytorch_model.bin(.index.json)")


class HFDirSource:
    """Tensor getter over an HF directory. ``get`` returns an owned copy; ``release`` unmaps files."""

    def __init__(self, hf_dir: str | Path) -> None:
        self.dir = Path(hf_dir)
        if not self.dir.is_dir():
            raise ConversionError(f"--load-dir {self.dir} is not a directory")
        files, weight_map = _weight_files(self.dir)
        self.infos: dict[str, TensorInfo] = {}
        self._handles: dict[Path, object] = {}
        for f in files:
            for info in self._inventory(f):
                if info.name in self.infos:
                    raise ConversionError(f"tensor {info.name!r} appears in both {self.infos[info.name].file} "
                                          f"and {info.file}")
                self.infos[info.name] = info
        self.release()
        if weight_map is not None:
            for name, fname in weight_map.items():
                info = self.infos.get(name)
                if info is None or Path(info.file).name != fname:
                    raise ConversionError(f"tensor {name!r}: the index places it in {fname}, which does not hold it")
        self.bytes_read = 0
        self.tensors_read = 0
        self.read_names: set[str] = set()

    def _open(self, f: Path):
        handle = self._handles.get(f)
        if handle is None:
            if f.suffix == ".safetensors":
                from safetensors import safe_open

                try:
                    handle = safe_open(str(f), framework="pt", device="cpu")
                except Exception as e:  # noqa: BLE001 - truncated / corrupt file: one line naming it
                    raise ConversionError(f"cannot read {f}: {e}") from None
            else:
                try:
                    handle = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
                except Exception as e:  # noqa: BLE001
                    raise ConversionError(f"cannot read {f} with weights_only=True: {type(e).__name__}: {e}") from None
                if not isinstance(handle, dict):
                    raise ConversionError(f"{f}: expected a state dict, found {type(handle).__name__}")
            self._handles[f] = handle
        return handle

    def _inventory(self, f: Path) -> list[TensorInfo]:
        handle = self._open(f)
        out = []
        if f.suffix == ".safetensors":
            for name in handle.keys():
                sl = handle.get_slice(name)
                dtype = SAFETENSORS_DTYPES.get(sl.get_dtype())
                if dtype is None:
                    raise ConversionError(f"tensor {name!r} in {f}: unsupported dtype {sl.get_dtype()}")
                out.append(TensorInfo(name, tuple(sl.get_shape()), dtype, str(f)))
        else:
            for name, t in handle.items():
                if not isinstance(t, torch.Tensor):
                    raise ConversionError(f"entry {name!r} in {f} is not a tensor")
                out.append(TensorInfo(name, tuple(t.shape), t.dtype, str(f)))
        return out

    def get(self, name: str) -> torch.Tensor:
        info = self.infos.get(name)
        if info is None:
            raise KeyError(name)
        f = Path(info.file)
        handle = self._open(f)
        t = handle.get_tensor(name) if f.suffix == ".safetensors" else handle[name].clone()
        self.bytes_read += info.nbytes
        self.tensors_read += 1
        self.read_names.add(name)
        return t

    def release(self) -> None:
        """Drop every open file (unmapping it), so pages read so far stop counting as our memory."""
        self._handles.clear()
