"""The device layer: the only code in moetrain that knows cuda / npu / cpu.

``get_backend()`` picks a backend automatically (torch_npu importable with a device -> npu; CUDA
available -> cuda; else cpu), or by name (``--device`` / ``MOETRAIN_DEVICE``). ``setup_device``
prepares the process (redirections, kernel table) once.
"""

from moetrain.device.base import DeviceBackend, MemoryStats
from moetrain.device.selection import BACKENDS, get_backend, select_backend_name, setup_device

__all__ = ["BACKENDS", "DeviceBackend", "MemoryStats", "get_backend", "select_backend_name", "setup_device"]
