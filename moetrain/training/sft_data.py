"""Supervised fine-tuning data: the preprocessor's instruction datasets, in epochs, as micro-batches.

``tools/preprocess_data.py --handler-name ...InstructionHandler`` writes three aligned indexed
datasets under ``--output-prefix P`` (``P_packed_{input_ids,labels,attention_mask}_document``): one
row per sample, or with ``--pack`` several whole samples per row, where ``attention_mask`` holds the
1-based index of each token's sample in its row. ``labels`` align with ``input_ids`` (-100 on the
prompt); the shift to next-token targets happens here.

Samples are a fixed set of rows, read in epochs. The position in the data is one integer, the
number of samples consumed: global sample ``k`` is row ``perm_e[k mod n]`` of epoch ``e = k // n``
(``perm_e`` a permutation seeded by ``seed + e``, or the stored order with ``--no-shuffle``), and
data-parallel rank ``r`` takes, of each micro-batch's ``mbs * dp`` consecutive samples, its own
``mbs`` (Megatron's sampler). So a resume mid-epoch, or a run with another DP size, sees exactly the
same global batches. ``--split`` divides the rows into train / validation (contiguous, as Megatron).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from moetrain.config import ConfigError
from moetrain.data.pipeline import SFT_OUTPUTS, sft_output_name
from moetrain.data.preprocess import sidecar_path
from moetrain.data.templates import IGNORE_INDEX
from moetrain.training.data_splits import split_counts

OUTPUTS = SFT_OUTPUTS
PAD_MULTIPLE = 8  # --variable-seq-lengths rounds a micro-batch's length up to this (x TP for SP)


def output_prefix(prefix: str, name: str) -> str:
    return f"{prefix}_{sft_output_name(name)}"


def instruction_prefix(data_path: str) -> str:
    """The preprocessor's ``--output-prefix`` P, from P itself or from one of its output prefixes."""
    for name in OUTPUTS:
        suffix = "_" + sft_output_name(name)
        if data_path.endswith(suffix):
            return data_path[: -len(suffix)]
    return data_path


def sidecar(prefix: str) -> dict | None:
    path = Path(sidecar_path(prefix))
    return json.loads(path.read_text()) if path.is_file() else None


def is_instruction_data(data_path: str) -> bool:
    prefix = instruction_prefix(data_path)
    return Path(output_prefix(prefix, "input_ids") + ".idx").is_file()


def _row_lengths(idx_prefix: str) -> np.ndarray:
    """Row lengths from the .idx alone (megatron's index reader memory-maps it: no .bin read)."""
    from megatron.core.datasets.indexed_dataset import _IndexReader

    reader = _IndexReader(idx_prefix + ".idx", multimodal=False)
    lengths = np.array(reader.sequence_lengths, copy=True)  # a copy: the reader's mmap closes with it
    del reader
    return lengths


@dataclass(frozen=True)
class InstructionDataInfo:
    prefix: str
    rows: int
    max_row_length: int
    packed: bool
    prompt_type: str | None


def check_instruction_data(data_path: str, seq_length: int, prompt_type: str | None) -> InstructionDataInfo:
    """Pre-launch checks (no process group): one ConfigError naming the file and what to do."""
    prefix = instruction_prefix(data_path)
    missing = [output_prefix(prefix, n) + s for n in OUTPUTS for s in (".bin", ".idx")
               if not Path(output_prefix(prefix, n) + s).is_file()]
    if missing:
        if Path(f"{data_path}.idx").is_file() or Path(f"{prefix}_text_document.idx").is_file():
            raise ConfigError(f"--data-path {data_path} holds pretraining text (GeneralPretrainHandler output), not "
                              "an instruction dataset: preprocess with --handler-name AlpacaStyleInstructionHandler "
                              "(or Sharegpt / OpenAI style) --prompt-type ..., or train it with moetrain.pretrain")
        raise ConfigError(f"--data-path {data_path}: instruction dataset files not found ({', '.join(missing[:2])}"
                          f"{' ...' if len(missing) > 2 else ''}); give the --output-prefix of tools/preprocess_data.py")
    meta = sidecar(prefix) or {}
    config = meta.get("config", {})
    stored_prompt = config.get("prompt_type")
    if prompt_type is not None and stored_prompt is not None and prompt_type != stored_prompt:
        raise ConfigError(f"--prompt-type {prompt_type} differs from the data's: {prefix} was preprocessed with "
                          f"--prompt-type {stored_prompt} ({sidecar_path(prefix)}); preprocess again or pass "
                          f"--prompt-type {stored_prompt}")
    lengths = _row_lengths(output_prefix(prefix, "input_ids"))
    for name in OUTPUTS[1:]:
        other = _row_lengths(output_prefix(prefix, name))
        if other.shape != lengths.shape or not np.array_equal(other, lengths):
            raise ConfigError(f"{output_prefix(prefix, name)}: rows do not align with "
                              f"{output_prefix(prefix, 'input_ids')}; preprocess again")
    if lengths.size == 0:
        raise ConfigError(f"--data-path {data_path}: the instruction dataset holds no samples")
    packed = bool(config.get("pack", False))
    longest = int(lengths.max())
    if packed and longest > seq_length:
        row = int(lengths.argmax())
        raise ConfigError(f"--data-path {data_path}: packed row {row} has {longest} tokens, more than --seq-length "
                          f"{seq_length}; packed rows cannot be cut. Preprocess with --seq-length {seq_length} "
                          f"(or train with --seq-length {longest})")
    return InstructionDataInfo(prefix=prefix, rows=int(lengths.size), max_row_length=longest, packed=packed,
                               prompt_type=stored_prompt)


class InstructionDataset:
    """Rows ``[first, first + count)`` of one instruction dataset: ids, labels, sample ids."""

    def __init__(self, prefix: str, first: int, count: int) -> None:
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.prefix = prefix
        self._data = {n: IndexedDataset(output_prefix(prefix, n), mmap=True) for n in OUTPUTS}
        self.first = first
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        row = self.first + i
        return {n: np.asarray(self._data[n][row], dtype=np.int64) for n in OUTPUTS}


def split_rows(rows: int, split: str, prefix: str) -> tuple[int, int]:
    """(train rows, validation rows) of ``--split``, Megatron's rule; no training rows is an error."""
    counts = split_counts(rows, split)
    if not counts[0]:
        raise ConfigError(f"--split {split} leaves no training samples of the {rows} in {prefix}")
    return counts[0], counts[1] or 0


def build_splits(prefix: str, split: str) -> tuple[InstructionDataset, InstructionDataset | None]:
    """(train, validation or None) as contiguous row ranges."""
    train, valid = split_rows(int(_row_lengths(output_prefix(prefix, "input_ids")).size), split, prefix)
    return InstructionDataset(prefix, 0, train), InstructionDataset(prefix, train, valid) if valid else None


class EpochOrder:
    """Global sample position -> row: a fresh permutation per epoch from the seed (or none)."""

    def __init__(self, rows: int, seed: int, shuffle: bool) -> None:
        self.rows = rows
        self.seed = seed
        self.shuffle = shuffle
        self._epoch, self._perm = -1, None

    def row(self, position: int) -> int:
        epoch, offset = divmod(position, self.rows)
        if not self.shuffle:
            return offset
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.RandomState((self.seed + epoch) % 2**32).permutation(self.rows)
        return int(self._perm[offset])


@dataclass
class Collate:
    """Rows -> one micro-batch: next-token targets, padding, and (packed) isolation."""

    seq_length: int
    pad_id: int
    variable_seq_lengths: bool = False
    pad_multiple: int = PAD_MULTIPLE
    reset_attention_mask: bool = False
    reset_position_ids: bool = False

    def length(self, rows: list[dict]) -> int:
        if not self.variable_seq_lengths:
            return self.seq_length
        longest = max(min(len(r["input_ids"]), self.seq_length) for r in rows)
        return min(self.seq_length, math.ceil(longest / self.pad_multiple) * self.pad_multiple)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        s = self.length(rows)
        b = len(rows)
        tokens = np.full((b, s), self.pad_id, dtype=np.int64)
        targets = np.full((b, s), IGNORE_INDEX, dtype=np.int64)
        sample_ids = np.zeros((b, s), dtype=np.int64)  # 0 = padding
        for i, r in enumerate(rows):
            n = min(len(r["input_ids"]), s)  # unpacked rows longer than --seq-length keep their start
            ids, labels, sid = r["input_ids"][:n], r["labels"][:n], r["attention_mask"][:n]
            tokens[i, :n] = ids
            sample_ids[i, :n] = sid
            # Position t predicts token t+1 when both belong to the same sample.
            nxt = labels[1:].copy()
            nxt[sid[1:] != sid[:-1]] = IGNORE_INDEX
            targets[i, : n - 1] = nxt
        loss_mask = targets != IGNORE_INDEX
        batch = {
            "tokens": torch.from_numpy(tokens),
            "labels": torch.from_numpy(np.where(loss_mask, targets, 0)),
            "loss_mask": torch.from_numpy(loss_mask.astype(np.float32)),
            "position_ids": torch.from_numpy(self._positions(sample_ids)),
            "real_tokens": torch.tensor(int((sample_ids > 0).sum())),
            "padding_mask": torch.from_numpy(sample_ids == 0),  # [b, s], True = padding (MoE routing)
        }
        if self.reset_attention_mask:
            batch["attention_mask"] = isolation_mask(torch.from_numpy(sample_ids))
        return batch

    def _positions(self, sample_ids: np.ndarray) -> np.ndarray:
        b, s = sample_ids.shape
        positions = np.broadcast_to(np.arange(s), (b, s)).copy()
        if self.reset_position_ids:
            for i in range(b):
                starts = np.flatnonzero(np.r_[True, sample_ids[i, 1:] != sample_ids[i, :-1]])
                for start, end in zip(starts, np.r_[starts[1:], s]):
                    positions[i, start:end] = np.arange(end - start)
        return positions


def isolation_mask(sample_ids: torch.Tensor) -> torch.Tensor:
    """[b, 1, s, s] bool, True where attention is not allowed (megatron-core's convention): the
    future, and tokens of another sample. Padding (id 0) attends to earlier padding only, so no row
    is fully masked (its softmax would be NaN)."""
    s = sample_ids.shape[1]
    future = torch.ones(s, s, dtype=torch.bool).triu(1)
    other = sample_ids[:, :, None] != sample_ids[:, None, :]
    return (future[None] | other).unsqueeze(1)
