"""Choosing the device backend: explicit name > MOETRAIN_DEVICE > auto-detection."""

from __future__ import annotations

import os

from moetrain.device.base import DeviceBackend
from moetrain.device.cpu import CpuBackend
from moetrain.device.cuda import CudaBackend
from moetrain.device.npu import NpuBackend
from moetrain.kernels.table import apply_overrides, env_overrides, set_kernels

BACKENDS: dict[str, type[DeviceBackend]] = {"npu": NpuBackend, "cuda": CudaBackend, "cpu": CpuBackend}
AUTO_ORDER = ("npu", "cuda", "cpu")

_ACTIVE: DeviceBackend | None = None


def select_backend_name(name: str | None = None) -> str:
    """'npu' | 'cuda' | 'cpu'. An explicit name that is unavailable is an error, not a fallback."""
    name = name or os.environ.get("MOETRAIN_DEVICE") or "auto"
    name = name.lower()
    if name == "auto":
        return next(n for n in AUTO_ORDER if BACKENDS[n].is_available())
    if name not in BACKENDS:
        raise ValueError(f"--device {name!r} is not one of auto, {', '.join(BACKENDS)}")
    if not BACKENDS[name].is_available():
        raise RuntimeError(
            f"--device {name} was requested but is not available on this machine "
            f"(use --device auto or cpu)"
        )
    return name


def get_backend(name: str | None = None) -> DeviceBackend:
    """The process's backend (created on first call; later calls must not ask for another)."""
    global _ACTIVE
    chosen = select_backend_name(name)
    if _ACTIVE is None:
        _ACTIVE = BACKENDS[chosen]()
    elif _ACTIVE.name != chosen:
        raise RuntimeError(f"device backend already set to {_ACTIVE.name!r}; cannot switch to {chosen!r}")
    return _ACTIVE


def setup_device(name: str | None = None) -> DeviceBackend:
    """Select, set up (redirections, MindSpeed, ...) and install the backend's kernel table, with the
    MOETRAIN_KERNELS overrides (moetrain.kernels.table) applied."""
    backend = get_backend(name)
    backend.setup()
    set_kernels(kernel_table_for(backend))
    return backend


def kernel_table_for(backend: DeviceBackend):
    """The backend's kernel table with the MOETRAIN_KERNELS overrides applied."""
    return apply_overrides(backend.kernel_table(), env_overrides(), backend.kernel_variants())


def reset_backend_for_tests() -> None:
    global _ACTIVE
    _ACTIVE = None
