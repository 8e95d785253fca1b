"""The device backend interface: everything moetrain needs to know about cuda / npu / cpu."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from moetrain.kernels.table import KernelTable, reference_table


@dataclass
class MemoryStats:
    """Bytes; ``peak_allocated`` is the high-water mark since the last reset."""

    allocated: int
    peak_allocated: int
    reserved: int

    def to_gb(self) -> dict[str, float]:
        return {k: v / 2**30 for k, v in self.__dict__.items()}


class DeviceBackend:
    """One accelerator family. Subclasses fill in the device-specific parts."""

    name: str = "base"
    device_type: str = "cpu"  # torch device type
    dist_backend: str = "gloo"  # torch.distributed backend
    # Pipeline p2p through torch.distributed.batch_isend_irecv (megatron-core's default).
    batch_p2p_comm: bool = True

    @classmethod
    def is_available(cls) -> bool:
        raise NotImplementedError

    def setup(self) -> None:
        """Process-wide preparation before megatron-core is used (idempotent)."""

    def set_device(self, local_rank: int) -> None:
        """Bind this process to its device (no-op on CPU)."""

    def device(self, local_rank: int | None = None) -> torch.device:
        if local_rank is None:
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device(self.device_type, local_rank) if self.device_type != "cpu" else torch.device("cpu")

    def device_name(self) -> str:
        return self.name

    def synchronize(self) -> None:
        """Wait for queued device work, so a timer measures it."""

    def memory_stats(self) -> MemoryStats:
        raise NotImplementedError

    def reset_peak_memory(self) -> None:
        """Start a new high-water mark for ``memory_stats().peak_allocated``."""

    def peak_flops(self, dtype: str) -> float | None:
        """Dense peak FLOP/s of one device for MFU (``MOETRAIN_PEAK_TFLOPS`` overrides)."""
        from moetrain.device.peak_flops import peak_flops

        return peak_flops(self.device_name(), dtype)

    def kernel_table(self) -> KernelTable:
        return reference_table()

    def kernel_variants(self) -> dict[str, dict]:
        """This backend's own kernel variants by kernel and name, selectable through MOETRAIN_KERNELS
        next to the pure-torch ones (moetrain.kernels.table.TORCH_VARIANTS)."""
        return {}

    def describe(self) -> str:
        return f"{self.name} ({self.device_name()}), collectives: {self.dist_backend}"
