"""A Megatron checkpoint directory: its naming, the latest-iteration pointer and moetrain's metadata.

    <root>/latest_checkpointed_iteration.txt    the pointer: the latest complete iteration
    <root>/iter_0000010/                        one checkpoint (``release/`` when the pointer says "release")
        moetrain.json                           moetrain's metadata (the trainer's torch_dist checkpoints)

Both formats share this: the trainer's torch_dist checkpoints (training/checkpointing.py) and the
per-rank Megatron format (iter_*/mp_rank_*/model_optim_rng.pt) that the converter writes and reads
(legacy.py, mg_dir.py). The pointer holds an iteration number; Megatron-LM's "release" is accepted
only where the per-rank format allows it (``allow_release``). Files are written atomically and
durably: a temporary sibling is written and fsync'd, ``os.replace``'d into place, and the directory
is fsync'd, so a crash leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from moetrain.config import ConfigError

TRACKER_FILE = "latest_checkpointed_iteration.txt"
META_FILE = "moetrain.json"
RELEASE = "release"


def iter_dir_name(iteration: int | str) -> str:
    return RELEASE if iteration == RELEASE else f"iter_{int(iteration):07d}"


def read_latest(root: str | Path, *, allow_release: bool = False,
                error: type[Exception] = ConfigError) -> int | str | None:
    """The iteration the pointer file names (or "release" when ``allow_release``); None when there
    is no pointer. Any other content raises ``error`` (the caller's error type) naming the file."""
    tracker = Path(root) / TRACKER_FILE
    if not tracker.is_file():
        return None
    text = tracker.read_text().strip()
    if allow_release and text == RELEASE:
        return text
    try:
        return int(text)
    except ValueError:
        expected = f"{RELEASE!r} or an iteration" if allow_release else "an iteration number"
        raise error(f"{tracker}: expected {expected}, found {text!r}") from None


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path``: temporary sibling, fsync, ``os.replace``, fsync of the directory."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def write_latest(root: str | Path, iteration: int | str) -> None:
    """Point ``root`` at ``iteration``; call it last, once that checkpoint is complete on disk."""
    write_atomic(Path(root) / TRACKER_FILE, str(iteration))


def read_meta(iter_dir: str | Path) -> dict | None:
    """The ``moetrain.json`` of one checkpoint directory, or None when it has none."""
    path = Path(iter_dir) / META_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def write_meta(iter_dir: str | Path, meta: dict) -> None:
    write_atomic(Path(iter_dir) / META_FILE, json.dumps(meta, indent=2, default=str))
