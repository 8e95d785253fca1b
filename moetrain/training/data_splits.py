"""Pre-launch check of ``--split`` against the data: no split may be empty.

megatron-core's ``GPTDataset`` loops forever (``_get_num_epochs``) when it is asked for samples from
a split that holds no sequences, and prints nothing while it does. Megatron gives split ``i`` the
sequences ``[round(lo_i * n), round(hi_i * n))`` of each dataset; this module computes the same
counts from the ``.idx`` header (a few bytes, no dataset build) and refuses before any rank starts.
"""

from __future__ import annotations

import re
import struct

from moetrain.config import ConfigError

SPLIT_NAMES = ("train", "validation", "test")
_IDX_MAGIC = b"MMIDIDX\x00\x00"


def sequence_count(prefix: str) -> int:
    """Sequences (documents, without --split-sentences) recorded in ``prefix.idx``."""
    with open(prefix + ".idx", "rb") as f:
        header = f.read(9 + 8 + 1 + 8)
    if len(header) < 26 or header[:9] != _IDX_MAGIC:
        raise ConfigError(f"--data-path {prefix}: {prefix}.idx is not a Megatron indexed dataset index")
    return struct.unpack("<Q", header[18:26])[0]


def split_weights(split: str) -> list[float]:
    """``--split "969,30,1"`` (or ``"0.9,0.1"``) as normalised train/valid/test fractions."""
    values = [float(v) for v in re.findall(r"[.0-9]+", split)]
    if not values or len(values) > 3 or sum(values) <= 0:
        raise ConfigError(f"--split {split!r}: give up to three non-negative weights, e.g. 98,1,1")
    values += [0.0] * (3 - len(values))
    total = sum(values)
    return [v / total for v in values]


def split_counts(n: int, split: str) -> list[int | None]:
    """Sequences per split as megatron-core assigns them; None for a split of weight 0 (not built)."""
    weights, counts, lo = split_weights(split), [], 0.0
    for w in weights:
        hi = lo + w
        counts.append(None if w == 0 else int(round(min(hi, 1.0) * n)) - int(round(lo * n)))
        lo = hi
    return counts


def working_split(n: int) -> str:
    """A ``--split`` that gives every split at least one of ``n`` sequences (n >= 3)."""
    held_out = max(1, n // 100)
    return f"{n - 2 * held_out},{held_out},{held_out}"


def check_splits(prefixes: list[str], split: str) -> None:
    """Raise one ConfigError naming the dataset, the counts and a ``--split`` that works."""
    for prefix in prefixes:
        n = sequence_count(prefix)
        counts = split_counts(n, split)
        empty = [name for name, c in zip(SPLIT_NAMES, counts) if c == 0]
        if not empty:
            continue
        shown = ", ".join(f"{name} {c if c is not None else 'off'}" for name, c in zip(SPLIT_NAMES, counts))
        fix = (f"use e.g. --split {working_split(n)}" if n >= 3 else
               "use --split 1,0,0 (too few for held-out splits) or preprocess more data")
        raise ConfigError(f"--split {split} leaves the {' and '.join(empty)} split of {prefix} empty: it holds "
                          f"{n} documents ({shown}); {fix}")
