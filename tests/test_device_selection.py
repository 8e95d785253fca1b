"""Device selection: auto order, explicit choice, errors, dist backends, memory stats, peak FLOPS.

Availability is simulated by monkeypatching each backend class's ``is_available``; nothing here
calls ``setup_device`` (it would apply the CPU redirections to the whole pytest process).
"""

from __future__ import annotations

import pytest

from moetrain.device import selection
from moetrain.device.base import DeviceBackend, MemoryStats
from moetrain.device.cpu import CpuBackend
from moetrain.device.cuda import CudaBackend
from moetrain.device.npu import NpuBackend
from moetrain.device.peak_flops import ENV_OVERRIDE


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("MOETRAIN_DEVICE", raising=False)
    monkeypatch.delenv(ENV_OVERRIDE, raising=False)
    selection.reset_backend_for_tests()
    yield
    selection.reset_backend_for_tests()


def _available(monkeypatch, npu: bool, cuda: bool) -> None:
    monkeypatch.setattr(NpuBackend, "is_available", classmethod(lambda cls: npu))
    monkeypatch.setattr(CudaBackend, "is_available", classmethod(lambda cls: cuda))


@pytest.mark.parametrize(("npu", "cuda", "expected"), [
    (True, True, "npu"), (True, False, "npu"), (False, True, "cuda"), (False, False, "cpu"),
])
def test_auto_order(monkeypatch, npu, cuda, expected):
    _available(monkeypatch, npu, cuda)
    assert selection.select_backend_name() == expected
    assert selection.select_backend_name("auto") == expected
    assert selection.select_backend_name("AUTO") == expected


def test_explicit_choice_by_flag_and_environment(monkeypatch):
    _available(monkeypatch, npu=True, cuda=True)
    assert selection.select_backend_name("cpu") == "cpu"
    assert selection.select_backend_name("cuda") == "cuda"
    monkeypatch.setenv("MOETRAIN_DEVICE", "cuda")
    assert selection.select_backend_name() == "cuda"
    assert selection.select_backend_name("cpu") == "cpu"  # the flag wins over the environment
    monkeypatch.setenv("MOETRAIN_DEVICE", "auto")
    assert selection.select_backend_name() == "npu"


@pytest.mark.parametrize("name", ["npu", "cuda"])
def test_unavailable_explicit_device_is_an_error_naming_it(monkeypatch, name):
    _available(monkeypatch, npu=False, cuda=False)
    with pytest.raises(RuntimeError, match=rf"--device {name} was requested but is not available"):
        selection.select_backend_name(name)
    monkeypatch.setenv("MOETRAIN_DEVICE", name)
    with pytest.raises(RuntimeError, match=name):
        selection.select_backend_name()


def test_unknown_device_name(monkeypatch):
    with pytest.raises(ValueError, match=r"'tpu' is not one of auto, npu, cuda, cpu"):
        selection.select_backend_name("tpu")
    monkeypatch.setenv("MOETRAIN_DEVICE", "xpu")
    with pytest.raises(ValueError, match="xpu"):
        selection.select_backend_name()


def test_get_backend_is_created_once_and_cannot_switch(monkeypatch):
    _available(monkeypatch, npu=False, cuda=True)
    backend = selection.get_backend("cpu")
    assert isinstance(backend, CpuBackend) and selection.get_backend("cpu") is backend
    with pytest.raises(RuntimeError, match="already set to 'cpu'"):
        selection.get_backend("cuda")


def test_dist_backends():
    assert {n: b.dist_backend for n, b in selection.BACKENDS.items()} == {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}
    assert {n: b.device_type for n, b in selection.BACKENDS.items()} == {"npu": "npu", "cuda": "cuda", "cpu": "cpu"}
    assert selection.AUTO_ORDER == ("npu", "cuda", "cpu")


def test_device_objects(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert str(CpuBackend().device()) == "cpu"
    assert str(CudaBackend().device()) == "cuda:3"
    assert str(CudaBackend().device(1)) == "cuda:1"


def test_cpu_memory_stats_positive():
    stats = CpuBackend().memory_stats()
    assert isinstance(stats, MemoryStats)
    assert stats.allocated > 10 * 2**20 and stats.reserved > 0  # a python with torch imported
    assert stats.peak_allocated >= stats.allocated * 0.9
    assert set(stats.to_gb()) == {"allocated", "peak_allocated", "reserved"}
    assert "gloo" in CpuBackend().describe()


class _Named(DeviceBackend):
    def __init__(self, device_name: str) -> None:
        self._device_name = device_name

    def device_name(self) -> str:
        return self._device_name


@pytest.mark.parametrize(("device_name", "dtype", "tflops"), [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4),
    ("NVIDIA H100 PCIe", "bf16", 756.0),
    ("NVIDIA A100-SXM4-80GB", "fp16", 312.0),
    ("NVIDIA A100-SXM4-80GB", "torch.float32", 19.5),
    ("Ascend910B2", "bf16", 376.0),
    ("Ascend910B2C", "bfloat16", 376.0),
    ("Ascend910B", "bf16", 313.0),
])
def test_peak_flops_through_a_backend(device_name, dtype, tflops):
    assert _Named(device_name).peak_flops(dtype) == pytest.approx(tflops * 1e12)


def test_peak_flops_unknown_and_override(monkeypatch):
    assert _Named("Some Future GPU").peak_flops("bf16") is None
    assert _Named("x86_64").peak_flops("fp32") is None  # CPUs: MFU is reported as null
    assert _Named("Ascend910B2").peak_flops("fp32") is None  # no fp32 figure listed
    monkeypatch.setenv(ENV_OVERRIDE, "123.5")
    assert _Named("Some Future GPU").peak_flops("bf16") == pytest.approx(123.5e12)
    monkeypatch.setenv(ENV_OVERRIDE, "fast")
    with pytest.raises(ValueError, match=ENV_OVERRIDE):
        _Named("x").peak_flops("bf16")
