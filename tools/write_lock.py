#!/usr/bin/env python
"""``make lock``: pin every package of the installed environment into ``requirements/lock.txt``.

``make install`` (and so ``make demo``, ``make test`` and CI) installs with ``-c requirements/lock.txt``,
so a clone made months after the suite passed installs the set of versions it passed with.
``pyproject.toml`` keeps its ranges for users installing moetrain into their own environment.
torch is not pinned here: the Makefile's ``TORCH_SPEC`` chooses the build (CPU, CUDA, CANN-matched).
Run ``make lock`` after changing dependencies, then ``make test``, and commit both.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from importlib import metadata

LOCK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "requirements", "lock.txt")
# Chosen by TORCH_SPEC (and the accelerator's own packages), never by the lock.
UNPINNED = ("torch", "triton", "moetrain", "pip", "setuptools", "wheel")


def frozen() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], check=True,
                         capture_output=True, text=True).stdout
    keep = []
    for line in out.splitlines():
        name = line.split("==")[0].strip().lower().replace("_", "-")
        if "==" not in line or name in UNPINNED or name.startswith("nvidia-"):
            continue
        keep.append(line.strip())
    return sorted(keep, key=str.lower)


def main() -> int:
    torch_version = metadata.version("torch")
    header = [
        "# The tested set: `make install` installs with `pip install -c requirements/lock.txt`.",
        f"# Written by `make lock` (tools/write_lock.py) on {datetime.date.today()}, Python {platform.python_version()},",
        f"# with torch {torch_version} (chosen by the Makefile's TORCH_SPEC, not pinned here).",
    ]
    tmp = LOCK + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(header + frozen()) + "\n")
    os.replace(tmp, LOCK)
    print(f"wrote {os.path.normpath(LOCK)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
