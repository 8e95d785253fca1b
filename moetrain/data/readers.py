"""Streaming readers: every input format yields records one at a time, never a whole file.

A record is ``RawRecord(source, line, payload, nbytes)``. For line formats (jsonl, txt) the payload
is the raw line (``str``) and JSON parsing happens in the worker processes, as Megatron-LM does,
so the main process stays light. For ``.json`` (a top-level array, parsed incrementally) and
``.parquet`` (read one row-group batch at a time) the payload is already a ``dict``.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

__all__ = ["RawRecord", "InputUnit", "InputError", "expand_inputs", "read_unit", "split_units", "SUFFIXES"]

SUFFIXES = (".jsonl.gz", ".jsonl", ".json", ".parquet", ".txt")
_LINE_FORMATS = (".jsonl", ".txt")  # uncompressed line formats can be split by byte range
_JSON_CHUNK = 1 << 20
_MAX_ELEMENT = 1 << 28  # a .json array element larger than this is treated as malformed


class InputError(ValueError):
    """Bad input: the message names the file (and line) and is shown to the user as is."""


class RawRecord(NamedTuple):
    # A NamedTuple, not a dataclass: records cross the process boundary in batches and a tuple
    # pickles several times faster.
    source: str  # file path, for error messages
    line: int  # 1-based line (jsonl/txt), element index (json) or row (parquet)
    payload: str | dict
    nbytes: int  # input bytes this record accounts for (progress / MB/s)
    fmt: str = ".jsonl"  # the input format (a str payload is a JSON line unless ".txt")


@dataclass(frozen=True)
class InputUnit:
    """A file, or a byte range [start, end) of an uncompressed line file (for --partitions)."""

    path: str
    fmt: str
    start: int = 0
    end: int | None = None


def file_format(path: str) -> str:
    name = path.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise InputError(
        f"{path}: unknown input extension; supported: {', '.join(SUFFIXES)} (or a directory / glob of these)"
    )


# What a preprocessing run writes beside its outputs: a directory given as --input (often the same
# directory as --output-prefix) must not read it back as a corpus.
SIDECAR_SUFFIX = "_preprocess.json"


def _is_own_output(name: str) -> bool:
    return name.endswith(SIDECAR_SUFFIX)


def expand_inputs(spec: str) -> list[InputUnit]:
    """``--input``: a file, a directory (its supported files, sorted) or a glob (sorted)."""
    if os.path.isdir(spec):
        paths = sorted(
            str(p) for p in Path(spec).iterdir()
            if p.is_file() and p.name.lower().endswith(SUFFIXES) and not _is_own_output(p.name)
        )
        if not paths:
            raise InputError(f"{spec}: directory holds no {', '.join(SUFFIXES)} files")
    elif os.path.isfile(spec):
        paths = [spec]
    else:
        paths = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
        if not paths:
            raise InputError(f"--input {spec!r}: no such file, directory or glob match")
    return [InputUnit(p, file_format(p)) for p in paths]


def split_units(units: list[InputUnit], parts: int) -> list[list[InputUnit]]:
    """Cut the input into ``parts`` contiguous shards of about equal bytes, keeping record order.

    Line files are cut at byte offsets (a line belongs to the shard where it starts), other
    formats only at file boundaries. Concatenating the shards' outputs in order therefore gives
    exactly the unsharded output.
    """
    pieces: list[tuple[InputUnit, int]] = []
    total = sum(os.path.getsize(u.path) for u in units)
    target = max(1, total // parts)
    for u in units:
        size = os.path.getsize(u.path)
        if u.fmt in _LINE_FORMATS and size > target:
            n = -(-size // target)
            bounds = [size * i // n for i in range(n + 1)]
            pieces += [(InputUnit(u.path, u.fmt, a, b), b - a) for a, b in zip(bounds, bounds[1:])]
        else:
            pieces.append((u, size))
    shards: list[list[InputUnit]] = [[] for _ in range(parts)]
    acc = 0
    for unit, size in pieces:
        # Assign by the byte position of the piece's middle: contiguous and balanced.
        idx = min(parts - 1, int((acc + size / 2) * parts / max(total, 1)))
        shards[idx].append(unit)
        acc += size
    return shards


def _count_lines_before(path: str, offset: int) -> int:
    n = 0
    with open(path, "rb") as f:
        while offset > 0:
            chunk = f.read(min(offset, 1 << 20))
            if not chunk:
                break
            n += chunk.count(b"\n")
            offset -= len(chunk)
    return n


def _iter_lines(unit: InputUnit) -> Iterator[RawRecord]:
    opener = gzip.open if unit.fmt == ".jsonl.gz" else open
    with opener(unit.path, "rb") as f:
        pos = unit.start
        line_no = 1
        if unit.start > 0:
            # Skip the tail of the line that started in the previous range.
            f.seek(unit.start - 1)
            tail = f.readline()
            pos = unit.start - 1 + len(tail)
            line_no = _count_lines_before(unit.path, pos) + 1
        for raw in f:
            if unit.end is not None and pos >= unit.end:
                break
            pos += len(raw)
            if unit.fmt != ".txt" and not raw.strip():
                line_no += 1  # a blank line in JSON Lines holds no record
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{unit.path}:{line_no}: not valid UTF-8 ({e})") from None
            yield RawRecord(unit.path, line_no, text.rstrip("\r\n"), len(raw), unit.fmt)
            line_no += 1


def _iter_json_array(unit: InputUnit) -> Iterator[RawRecord]:
    """Incremental parser for ``[ {...}, {...} ]``: memory is bounded by one element + one chunk."""
    decoder = json.JSONDecoder()
    with open(unit.path, encoding="utf-8") as f:
        buf = f.read(_JSON_CHUNK)
        pos = 0
        eof = False

        def fill() -> bool:
            nonlocal buf, pos, eof
            more = f.read(_JSON_CHUNK)
            if not more:
                eof = True
                return False
            buf = buf[pos:] + more
            pos = 0
            return True

        def skip_ws() -> None:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or not fill():
                    return

        skip_ws()
        if pos >= len(buf) or buf[pos] != "[":
            raise InputError(f"{unit.path}: a .json input must hold a top-level array of objects")
        pos += 1
        index = 0
        while True:
            skip_ws()
            if pos >= len(buf):
                raise InputError(f"{unit.path}: unexpected end of file inside the top-level array")
            if buf[pos] == "]":
                return
            if index > 0:
                if buf[pos] != ",":
                    raise InputError(f"{unit.path}: element {index + 1}: expected ',' or ']'")
                pos += 1
                skip_ws()
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as e:
                    # Probably an element cut by the chunk boundary: read more and retry.
                    # A real error also lands here: the size cap keeps memory bounded then.
                    if eof or len(buf) - pos > _MAX_ELEMENT or not fill():
                        raise InputError(f"{unit.path}: element {index + 1}: malformed JSON ({e.msg})") from None
            index += 1
            yield RawRecord(unit.path, index, obj, end - pos, unit.fmt)
            pos = end


def _iter_parquet(unit: InputUnit, batch_rows: int = 1024) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(unit.path)
    except Exception as e:  # pyarrow raises ArrowInvalid etc.
        raise InputError(f"{unit.path}: cannot read parquet ({e})") from None
    rows = max(1, pf.metadata.num_rows)
    per_row = os.path.getsize(unit.path) // rows
    row = 0
    for batch in pf.iter_batches(batch_size=batch_rows):
        for rec in batch.to_pylist():
            row += 1
            yield RawRecord(unit.path, row, rec, per_row, unit.fmt)


def read_unit(unit: InputUnit) -> Iterator[RawRecord]:
    if unit.fmt in (".jsonl", ".jsonl.gz", ".txt"):
        return _iter_lines(unit)
    if unit.fmt == ".json":
        return _iter_json_array(unit)
    if unit.fmt == ".parquet":
        return _iter_parquet(unit)
    raise InputError(f"{unit.path}: unknown input format {unit.fmt}")
