"""Dense peak FLOPS per accelerator and dtype: the denominator of MFU.

A pure table and a lookup, importable without torch.cuda or torch_npu so that the planner and the
report tools run anywhere. Figures are *dense* (no 2:4 sparsity) tensor-core / cube-unit peaks as the
vendors publish them; MFU computed against a sparse figure would be understated by 2x.

Override order: explicit ``override_tflops`` argument, then the ``MOETRAIN_PEAK_TFLOPS`` environment
variable, then the table. Unknown devices and CPUs give ``None`` (MFU is then reported as null rather
than as a made-up number).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ENV_OVERRIDE = "MOETRAIN_PEAK_TFLOPS"

# dtype spellings accepted from CLIs, torch dtypes (str(torch.bfloat16)) and run_info.json.
_DTYPE_ALIASES = {
    "bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "torch.float16": "fp16",
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "torch.float32": "fp32",
    "tf32": "tf32",
    "fp8": "fp8",
}


@dataclass(frozen=True)
class DevicePeak:
    """Dense peak TFLOPS of one device model per dtype; ``keys`` are substrings of its reported name."""

    label: str
    keys: tuple[str, ...]
    tflops: dict[str, float]
    memory_gb: float
    source: str


# Order matters: the first entry whose key occurs in the (lower-cased) device name wins, so more
# specific names (H100 PCIe, H100 NVL, 910B2) come before the generic ones (H100, 910B).
DEVICES: tuple[DevicePeak, ...] = (
    # NVIDIA H100 datasheet (nvidia.com/en-us/data-center/h100): PCIe BF16/FP16 1,513 TFLOPS with
    # sparsity -> 756 dense; TF32 756 sparse -> 378 dense; FP32 51.
    DevicePeak("NVIDIA H100 PCIe", ("h100 pcie", "h100-pcie", "h100_pcie"),
               {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0, "fp8": 1513.0}, 80,
               "NVIDIA H100 datasheet, PCIe column, sparse figures halved"),
    # H100 NVL column of the same datasheet: 1,671 sparse -> 835 dense (94 GB).
    DevicePeak("NVIDIA H100 NVL", ("h100 nvl",),
               {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0, "fp8": 1670.0}, 94,
               "NVIDIA H100 datasheet, NVL column, sparse figures halved"),
    # H200 NVL: NVIDIA H200 datasheet, NVL column: 1,671 sparse -> 835 dense.
    DevicePeak("NVIDIA H200 NVL", ("h200 nvl",),
               {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0, "fp8": 1670.0}, 141,
               "NVIDIA H200 datasheet, NVL column, sparse figures halved"),
    # H200 SXM has the H100 SXM compute (same GH100 die and clocks), more/faster HBM:
    # datasheet BF16 1,979 sparse -> 989.4 dense.
    DevicePeak("NVIDIA H200 SXM", ("h200",),
               {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9, "fp8": 1978.9}, 141,
               "NVIDIA H200 datasheet, SXM column, sparse figures halved"),
    # H100 SXM5 ("NVIDIA H100 80GB HBM3"): datasheet BF16 1,979 sparse -> 989.4 dense. H800 is the
    # export variant with the same compute (reduced NVLink only).
    DevicePeak("NVIDIA H100 SXM", ("h100", "h800"),
               {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9, "fp8": 1978.9}, 80,
               "NVIDIA H100 datasheet, SXM column, sparse figures halved"),
    # A100 datasheet: BF16/FP16 312 dense (624 sparse), TF32 156 dense, FP32 19.5; identical for the
    # 40 GB and 80 GB, SXM and PCIe parts. A800 is the export variant with the same compute.
    DevicePeak("NVIDIA A100", ("a100", "a800"),
               {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}, 80,
               "NVIDIA A100 datasheet (40GB and 80GB)"),
    # Ascend 910B family. Huawei's public pages give system figures (Atlas 800T A2: up to ~2.5 PFLOPS
    # FP16 for 8 NPUs, i.e. ~313 per NPU) rather than a per-SKU table; the per-SKU FP16 figures
    # below are those of Huawei's Atlas A2 SKU sheets as circulated by Huawei resellers and used by
    # Ascend MFU tooling (910B1 ~414, 910B2 ~376, 910B3 ~313, 910B4 ~280). BF16 runs on the same cube
    # unit at the same rate. Treat them as approximate; set MOETRAIN_PEAK_TFLOPS for exact figures.
    # torch_npu reports e.g. "Ascend910B2" or "Ascend910B2C" (the C suffix is the same compute).
    DevicePeak("Ascend 910B1", ("910b1",), {"bf16": 414.0, "fp16": 414.0}, 64,
               "Huawei Atlas A2 SKU sheet (approximate)"),
    DevicePeak("Ascend 910B2", ("910b2",), {"bf16": 376.0, "fp16": 376.0}, 64,
               "Huawei Atlas A2 SKU sheet (approximate)"),
    DevicePeak("Ascend 910B3", ("910b3",), {"bf16": 313.0, "fp16": 313.0}, 64,
               "Huawei Atlas 800T A2 (2.5 PFLOPS FP16 / 8 NPUs)"),
    DevicePeak("Ascend 910B4", ("910b4",), {"bf16": 280.0, "fp16": 280.0}, 32,
               "Huawei Atlas A2 SKU sheet (approximate)"),
    # A bare "910B" (unknown SKU): the conservative Atlas 800T A2 per-NPU figure.
    DevicePeak("Ascend 910B", ("910b",), {"bf16": 313.0, "fp16": 313.0}, 64,
               "Huawei Atlas 800T A2 (2.5 PFLOPS FP16 / 8 NPUs)"),
)


def normalize_dtype(dtype: str) -> str:
    key = str(dtype).strip().lower()
    if key not in _DTYPE_ALIASES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(set(_DTYPE_ALIASES))}")
    return _DTYPE_ALIASES[key]


def find_device(device_name: str) -> DevicePeak | None:
    """The table entry whose key occurs in ``device_name`` (case-insensitive), or None."""
    # Short CLI names ("h100", "910b2", "ascend910b2c") and full driver names both reduce to a
    # lower-case string in which the keys are searched; spaces/dashes are kept because
    # "h100 pcie" must not match "h100" first.
    name = device_name.strip().lower().replace("ascend", "")
    for dev in DEVICES:
        if any(k in name for k in dev.keys):
            return dev
    return None


def peak_flops(device_name: str, dtype: str = "bf16", override_tflops: float | None = None) -> float | None:
    """Dense peak FLOP/s of one device for ``dtype``; None when unknown (CPUs, unlisted devices)."""
    if override_tflops is not None:
        return float(override_tflops) * 1e12
    env = os.environ.get(ENV_OVERRIDE, "").strip()
    if env:
        try:
            return float(env) * 1e12
        except ValueError as exc:
            raise ValueError(f"{ENV_OVERRIDE}={env!r} is not a number of TFLOPS") from exc
    dev = find_device(device_name)
    if dev is None:
        return None
    tflops = dev.tflops.get(normalize_dtype(dtype))
    return None if tflops is None else tflops * 1e12


def known_devices() -> list[str]:
    """Short names accepted by the planner's ``--device`` (the first key of each entry)."""
    return [d.keys[0] for d in DEVICES]
