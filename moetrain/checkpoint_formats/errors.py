"""The one error type the converter raises for bad input; the CLI prints it as a single line."""

from __future__ import annotations


class ConversionError(ValueError):
    """Bad input or options: a missing shard, an unknown or mis-shaped tensor, a refused save dir."""
