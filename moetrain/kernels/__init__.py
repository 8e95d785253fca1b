"""Compute kernels: a pure-torch reference for each, plus backend variants chosen once per process.

``moetrain.kernels.table.KernelTable`` names one function per kernel; the device backend builds the
table (``DeviceBackend.kernel_table()``) and models read it through ``get_kernels()``. Tests swap
entries with ``override_kernels`` to compare a fused path against the reference.
"""

from moetrain.kernels.table import KernelTable, get_kernels, override_kernels, reference_table, set_kernels

__all__ = ["KernelTable", "get_kernels", "override_kernels", "reference_table", "set_kernels"]
