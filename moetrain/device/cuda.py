"""NVIDIA GPUs: nccl collectives; flash-attn / torch fused kernels when importable, else compiled
flex_attention for soft-capped attention (Grok-1)."""

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
        else:
            table = cuda_kernels.with_flex_softcap_attention(table)
        return cuda_kernels.with_torch_fused(table)

    def kernel_variants(self) -> dict[str, dict]:
        from moetrain.device import cuda_kernels

        return {"attention": {"flash-attn": cuda_kernels.attention_flash},
                "softcap_attention": {"flash-attn": cuda_kernels.attention_flash,
                                      "flex": cuda_kernels.attention_flex},
                "rms_norm": {"torch-fused": cuda_kernels.rms_norm_torch_fused}}
