"""Ascend NPUs: hccl collectives, torch_npu's cuda->npu redirection, MindSpeed when present."""

from __future__ import annotations

import importlib
import importlib.util
import logging

import torch

from moetrain.device.base import DeviceBackend, MemoryStats
from moetrain.kernels.table import KernelTable

logger = logging.getLogger(__name__)


def _torch_npu():
    return importlib.import_module("torch_npu")


class NpuBackend(DeviceBackend):
    name = "npu"
    device_type = "npu"
    dist_backend = "hccl"

    @classmethod
    def is_available(cls) -> bool:
        if importlib.util.find_spec("torch_npu") is None:
            return False
        try:
            _torch_npu()
        except Exception as exc:  # noqa: BLE001 - installed but unloadable (e.g. CANN libraries missing)
            logger.warning("torch_npu is installed but failed to import (%s); not using the NPU", exc)
            return False
        npu = getattr(torch, "npu", None)
        return bool(npu is not None and npu.is_available())

    def setup(self) -> None:
        _torch_npu()
        # torch_npu's own redirection of torch.cuda.* (and device="cuda") to the NPU.
        importlib.import_module("torch_npu.contrib.transfer_to_npu")
        if importlib.util.find_spec("mindspeed") is not None:
            # MindSpeed patches megatron-core with Ascend fused kernels when it is installed.
            importlib.import_module("mindspeed.megatron_adaptor")
            logger.info("MindSpeed adaptor loaded")

    def set_device(self, local_rank: int) -> None:
        torch.npu.set_device(local_rank)

    def device_name(self) -> str:
        return torch.npu.get_device_name()

    def synchronize(self) -> None:
        torch.npu.synchronize()

    def memory_stats(self) -> MemoryStats:
        return MemoryStats(
            allocated=torch.npu.memory_allocated(),
            peak_allocated=torch.npu.max_memory_allocated(),
            reserved=torch.npu.memory_reserved(),
        )

    def reset_peak_memory(self) -> None:
        torch.npu.reset_peak_memory_stats()

    def kernel_table(self) -> KernelTable:
        from moetrain.device import npu_kernels

        return npu_kernels.npu_table()
