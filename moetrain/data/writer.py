"""Indexed-dataset output through megatron-core's own IndexedDatasetBuilder.

Files are written under temporary names and renamed only once complete, ``.bin`` first and
``.idx`` last: an interrupted or failed run never leaves a valid-looking ``.idx`` behind.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

__all__ = ["DatasetWriter", "OutputStats", "sha256_file"]


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class OutputStats:
    prefix: str
    dtype: str
    documents: int = 0
    sequences: int = 0
    tokens: int = 0
    sha256: dict[str, str] = field(default_factory=dict)


class DatasetWriter:
    """One ``{prefix}.bin/.idx`` pair."""

    def __init__(self, prefix: str, dtype) -> None:
        self.prefix = prefix
        self.dtype = np.dtype(dtype).type
        self._tmp = f".tmp-{os.getpid()}"
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        self._builder = IndexedDatasetBuilder(self._bin + self._tmp, dtype=self.dtype)
        self.stats = OutputStats(prefix, np.dtype(self.dtype).name)
        self._done = False

    @property
    def _bin(self) -> str:
        return self.prefix + ".bin"

    @property
    def _idx(self) -> str:
        return self.prefix + ".idx"

    def add_document(self, ids: np.ndarray, lengths: list[int]) -> None:
        self._builder.add_document(ids, lengths)
        self.stats.documents += 1
        self.stats.sequences += len(lengths)
        self.stats.tokens += int(ids.size)

    def add_index(self, prefix: str) -> None:
        """Append a whole finished dataset (megatron-core's add_index; dtypes must match)."""
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        ds = IndexedDataset(prefix)
        if ds.index.dtype != self.dtype:
            raise ValueError(f"{prefix}: dtype {np.dtype(ds.index.dtype).name} differs from {self.stats.dtype}")
        self.stats.documents += len(ds.document_indices) - 1
        self.stats.sequences += len(ds.sequence_lengths)
        self.stats.tokens += int(ds.sequence_lengths.sum(dtype=np.int64))
        del ds
        self._builder.add_index(prefix)

    def finalize(self) -> OutputStats:
        self._builder.finalize(self._idx + self._tmp)
        os.replace(self._bin + self._tmp, self._bin)
        os.replace(self._idx + self._tmp, self._idx)
        self._done = True
        self.stats.sha256 = {"bin": sha256_file(self._bin), "idx": sha256_file(self._idx)}
        return self.stats

    def abort(self) -> None:
        """Remove the temporary files (after an error or an interrupt)."""
        if self._done:
            return
        try:
            self._builder.data_file.close()
        except Exception:
            pass
        for path in (self._bin + self._tmp, self._idx + self._tmp):
            if os.path.exists(path):
                os.remove(path)
        self._done = True
