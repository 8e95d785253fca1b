"""SFT sample length policy and greedy in-order packing to ``--seq-length``.

Over-long samples are truncated (keeping the start, where the prompt is) or dropped, per
``--overlong``, and counted; a sample is never split across rows. Packing fills a row with whole
samples in input order and starts a new row when the next sample does not fit. The packed
``attention_mask`` holds, per token, the 1-based index of its sample within the row, so a
training loop can build the block-diagonal mask (or reset position ids) at sample boundaries.
Rows are not padded: the training loop pads a batch to its own length.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from moetrain.data.templates import IGNORE_INDEX

__all__ = ["Row", "LengthPolicy", "Packer"]


@dataclass
class Row:
    input_ids: np.ndarray
    labels: np.ndarray
    attention_mask: np.ndarray


@dataclass
class LengthPolicy:
    seq_length: int | None
    overlong: str = "truncate"  # or "drop"
    truncated: int = 0
    dropped: int = 0

    def apply(self, ids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        if self.seq_length is None or ids.size <= self.seq_length:
            return ids, labels
        if self.overlong == "drop":
            self.dropped += 1
            return None
        ids, labels = ids[: self.seq_length], labels[: self.seq_length]
        if not (labels != IGNORE_INDEX).any():
            # Truncation removed every target token: nothing left to learn.
            self.dropped += 1
            return None
        self.truncated += 1
        return ids, labels


class Packer:
    def __init__(self, seq_length: int) -> None:
        self.seq_length = seq_length
        self._ids: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._used = 0

    def add(self, ids: np.ndarray, labels: np.ndarray) -> Iterator[Row]:
        """Add one sample (already within seq_length); yields a finished row when one fills."""
        if self._used + ids.size > self.seq_length and self._ids:
            yield self._flush()
        self._ids.append(ids)
        self._labels.append(labels)
        self._used += ids.size

    def finish(self) -> Iterator[Row]:
        if self._ids:
            yield self._flush()

    def _flush(self) -> Row:
        mask = np.concatenate([np.full(a.size, i + 1, dtype=np.int64) for i, a in enumerate(self._ids)])
        row = Row(np.concatenate(self._ids), np.concatenate(self._labels), mask)
        self._ids, self._labels, self._used = [], [], 0
        return row
