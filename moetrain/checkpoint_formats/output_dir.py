"""Atomic output directories: write next to the target, rename into place at the very end.

A conversion that fails or is interrupted leaves at most a hidden ``.<name>.tmp-<pid>`` sibling
(removed on a clean failure), never a ``--save-dir`` that looks complete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from moetrain.checkpoint_formats.errors import ConversionError


def check_target(save_dir: Path, overwrite: bool, load_dir: Path) -> None:
    if save_dir.resolve() == load_dir.resolve():
        raise ConversionError(f"--save-dir {save_dir} is the --load-dir; write somewhere else")
    if save_dir.exists():
        if not save_dir.is_dir():
            raise ConversionError(f"--save-dir {save_dir} exists and is not a directory")
        if any(save_dir.iterdir()) and not overwrite:
            raise ConversionError(f"--save-dir {save_dir} is not empty; pass --overwrite to replace it")


def temp_dir_for(save_dir: Path) -> Path:
    tmp = save_dir.parent / f".{save_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, save_dir: Path) -> None:
    """Replace ``save_dir`` by ``tmp``; the old contents are removed only once the new ones are in place."""
    if save_dir.exists():
        old = save_dir.parent / f".{save_dir.name}.old-{os.getpid()}"
        os.replace(save_dir, old)
        os.replace(tmp, save_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, save_dir)
