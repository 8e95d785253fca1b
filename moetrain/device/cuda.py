"""NVIDIA GPUs: nccl collectives; flash-attn / torch fused kernels when importable."""

from __future__ import annotations

import importlib.util

import torch

from moetrain.device.base import DeviceBackend, MemoryStats
from moetrain.kernels.table import KernelTable, reference_table


class CudaBackend(DeviceBackend):
    name = "cuda"
    device_type = "cuda"
    dist_backend = "nccl"

    @classmethod
    def is_available(cls) -> bool:
        return torch.cuda.is_available()

    def set_device(self, local_rank: int) -> None:
        torch.cuda.set_device(local_rank)

    def device_name(self) -> str:
        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cuda"

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def memory_stats(self) -> MemoryStats:
        return MemoryStats(
            allocated=torch.cuda.memory_allocated(),
            peak_allocated=torch.cuda.max_memory_allocated(),
            reserved=torch.cuda.memory_reserved(),
        )

    def reset_peak_memory(self) -> None:
        torch.cuda.reset_peak_memory_stats()

    def kernel_table(self) -> KernelTable:
        from moetrain.device import cuda_kernels

        table = reference_table()
        if importlib.util.find_spec("flash_attn") is not None:
            table = cuda_kernels.with_flash_attention(table)
        return cuda_kernels.with_torch_fused(table)
