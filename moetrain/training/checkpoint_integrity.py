"""What a checkpoint wrote, recorded at save and checked before it is read.

Every file of an ``iter_*`` directory (the dist-checkpoint shards, ``.metadata``, ``common.pt``,
the RNG files) gets its size and CRC-32 into ``moetrain.json``, which is written last. Hashing is
shared out: file i is read by rank i % world, at save and at load, so each rank reads about
1 / world of the checkpoint once more. A missing, short, long or changed file is then one message
naming the checkpoint, the file and what is wrong, before megatron-core reads anything (it would
otherwise fail on every rank with its own traceback).

``moetrain.json`` itself carries the record, so it cannot be checked against it: a checkpoint whose
``moetrain.json`` is missing or unreadable is damaged as a whole.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch.distributed as dist

from moetrain.checkpoint_formats.directory import META_FILE

_CHUNK = 16 << 20


def crc32_of(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            crc = zlib.crc32(block, crc)
    return crc


def _files(ckpt: Path) -> list[str]:
    return sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file() and p.name != META_FILE)


def _gather(part: dict | list) -> list:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [part]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, part)
    return out


def record_files(ckpt: Path) -> dict[str, dict[str, int]]:
    """Collective, once every rank's files are on disk: {file: {"size", "crc32"}} of ``ckpt``."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    mine = {name: {"size": (ckpt / name).stat().st_size, "crc32": crc32_of(ckpt / name)}
            for i, name in enumerate(_files(ckpt)) if i % world == rank}
    merged: dict[str, dict[str, int]] = {}
    for part in _gather(mine):
        merged.update(part)
    return dict(sorted(merged.items()))


def _problem(ckpt: Path, name: str, want: dict[str, int]) -> str | None:
    path = ckpt / name
    if not path.is_file():
        return f"{name} is missing"
    size = path.stat().st_size
    if size != want["size"]:
        return f"{name} is {size} bytes, {want['size']} were written ({'short' if size < want['size'] else 'long'})"
    if crc32_of(path) != want["crc32"]:
        return f"{name} has changed since it was written (CRC-32 {crc32_of(path):08x}, recorded {want['crc32']:08x})"
    return None


def damage(ckpt: Path) -> str | None:
    """Collective: what is wrong with ``ckpt`` (None when intact, or when it predates the records).
    Every rank gets the same answer."""
    try:
        meta = json.loads((ckpt / META_FILE).read_text())
    except FileNotFoundError:
        return f"{META_FILE} is missing"
    except (OSError, ValueError) as e:
        return f"{META_FILE} is unreadable ({e})"
    files = meta.get("files")
    if files is None:
        return None  # written before integrity records: read as it is
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    mine = [p for i, (name, want) in enumerate(sorted(files.items())) if i % world == rank
            for p in [_problem(ckpt, name, want)] if p]
    problems = sorted(p for part in _gather(mine) for p in part)
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more


def kept_iterations(root: Path, latest: int) -> list[int]:
    """The checkpoints of ``root`` up to the pointer's, newest first."""
    out = []
    for p in root.glob("iter_[0-9]*"):
        try:
            n = int(p.name[len("iter_"):])
        except ValueError:
            continue
        if n <= latest and p.is_dir():
            out.append(n)
    return sorted(out, reverse=True)


def resume_candidates(root: Path, latest: int) -> list[int]:
    """The order a resume tries checkpoints in: the pointer's, then the older kept ones, newest first."""
    return [latest] + [i for i in kept_iterations(root, latest) if i != latest]
