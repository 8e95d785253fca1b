"""A tqdm bar over tensors written, with the bytes written alongside."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    def __init__(self, total_tensors: int, enabled: bool = True) -> None:
        self._bar = tqdm(total=total_tensors, unit="tensor", disable=not enabled, file=sys.stderr,
                         dynamic_ncols=True)
        self._bytes = 0

    def update(self, tensors: int, nbytes: int) -> None:
        self._bytes += nbytes
        self._bar.set_postfix_str(f"{self._bytes / 1e9:.2f} GB", refresh=False)
        self._bar.update(tensors)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()
