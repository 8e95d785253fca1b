"""Wiring tests: the npu and cuda backends' setup and kernel tables, on a CPU.

Stand-in modules (``torch_npu`` and its ``contrib.transfer_to_npu``, a ``torch.npu`` namespace,
``mindspeed.megatron_adaptor``, ``flash_attn``) record which ops were called; their ops compute the
reference result, so the tables' outputs are compared with moetrain's torch references. These test
the wiring (which op is called with which arguments), not the vendor kernels themselves.
Also checks that moetrain's model layers really call the kernel table (one spawned rank).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from device_ranks import model_uses_kernel_table  # tests/ is on sys.path under pytest

from moetrain.device import selection
from moetrain.device.cuda import CudaBackend
from moetrain.device.npu import NpuBackend
from moetrain.kernels.activations import glu_reference
from moetrain.kernels.attention import attention_reference
from moetrain.kernels.grouped_gemm import grouped_gemm_reference
from moetrain.kernels.rms_norm import rms_norm_reference
from moetrain.kernels.rotary import rotary_reference, rotate_half
from moetrain.testing.spawn import run_on_ranks


def _module(name: str, package: bool = False, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        module.__path__ = []
    module.__dict__.update(attrs)
    return module


class _RecordingImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Creates the named (empty) modules on import and records that they were imported."""

    def __init__(self, names, imported: list) -> None:
        self.names, self.imported = set(names), imported

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in self.names else None

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        self.imported.append(module.__name__)


class FakeNpu:
    """What the stand-ins saw: ``ops`` (names of torch_npu ops called, with kwargs) and ``imported``."""

    def __init__(self) -> None:
        self.ops: list[tuple[str, dict]] = []
        self.imported: list[str] = []
        self.devices: list[int] = []

    # ---- torch_npu ops, computing the reference result
    def npu_rms_norm(self, x, gamma, epsilon=1e-6):
        self.ops.append(("npu_rms_norm", {"dtype": x.dtype, "epsilon": epsilon}))
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + epsilon)
        return x * rstd * gamma, rstd

    def npu_rotary_mul(self, x, r1, r2):
        self.ops.append(("npu_rotary_mul", {}))
        return x * r1 + rotate_half(x) * r2

    def npu_swiglu(self, x, dim=-1):
        self.ops.append(("npu_swiglu", {"dim": dim}))
        a, b = x.chunk(2, dim=dim)
        return F.silu(a) * b

    def npu_fusion_attention(self, query, key, value, head_num, input_layout, scale=1.0, atten_mask=None,
                             keep_prob=1.0, sparse_mode=0, **kwargs):
        self.ops.append(("npu_fusion_attention", {"head_num": head_num, "input_layout": input_layout,
                                                  "keep_prob": keep_prob, "mask": atten_mask}))
        assert input_layout == "BNSD" and head_num == query.shape[1]
        out = attention_reference(query, key, value, scale, None, causal=False, mask=atten_mask)
        return out, None, None, None, 0, 0, 0

    def npu_grouped_matmul(self, x, weight, group_list=None, split_item=0, group_type=None, group_list_type=0,
                           **kwargs):
        self.ops.append(("npu_grouped_matmul", {"group_list": group_list.tolist(), "split_item": split_item,
                                                "group_type": group_type, "group_list_type": group_list_type}))
        bounds = [0, *group_list.tolist()]
        counts = torch.tensor([b - a for a, b in zip(bounds, bounds[1:])])
        (stacked,) = weight  # one [E, in, out] tensor
        return [grouped_gemm_reference(x[0], stacked, counts)]

    def names(self) -> list[str]:
        return [name for name, _ in self.ops]


@pytest.fixture
def fake_npu(monkeypatch):
    """torch_npu, torch_npu.contrib.transfer_to_npu and torch.npu stand-ins (no MindSpeed)."""
    fake = FakeNpu()
    ops = {n: getattr(fake, n) for n in ("npu_rms_norm", "npu_rotary_mul", "npu_swiglu", "npu_fusion_attention",
                                          "npu_grouped_matmul")}
    monkeypatch.setitem(sys.modules, "torch_npu", _module("torch_npu", package=True, **ops))
    monkeypatch.setitem(sys.modules, "torch_npu.contrib", _module("torch_npu.contrib", package=True))
    submodules = ["torch_npu.contrib.transfer_to_npu", "mindspeed.megatron_adaptor"]
    for name in submodules:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "meta_path", [_RecordingImporter(submodules, fake.imported), *sys.meta_path])
    npu = types.SimpleNamespace(
        is_available=lambda: True, set_device=fake.devices.append, get_device_name=lambda: "Ascend910B2",
        synchronize=lambda: None, memory_allocated=lambda: 1 << 20, max_memory_allocated=lambda: 3 << 20,
        memory_reserved=lambda: 4 << 20, reset_peak_memory_stats=lambda: fake.ops.append(("reset_peak", {})),
    )
    monkeypatch.setattr(torch, "npu", npu, raising=False)
    monkeypatch.delenv("MOETRAIN_DEVICE", raising=False)
    monkeypatch.delenv("MOETRAIN_PEAK_TFLOPS", raising=False)
    yield fake
    for name in submodules:
        sys.modules.pop(name, None)


@pytest.fixture
def fake_mindspeed(monkeypatch, fake_npu):
    monkeypatch.setitem(sys.modules, "mindspeed", _module("mindspeed", package=True))
    return fake_npu


# ---------------------------------------------------------------- npu backend
def test_npu_selected_automatically_when_torch_npu_has_a_device(fake_npu, monkeypatch):
    monkeypatch.setattr(CudaBackend, "is_available", classmethod(lambda cls: True))
    assert NpuBackend.is_available()
    assert selection.select_backend_name() == "npu"
    monkeypatch.setattr(torch.npu, "is_available", lambda: False)
    assert not NpuBackend.is_available()
    assert selection.select_backend_name() == "cuda"


def test_broken_torch_npu_is_not_available(fake_npu, monkeypatch):
    """A torch_npu that is installed but cannot load (e.g. missing CANN libraries) is no device."""
    monkeypatch.delitem(sys.modules, "torch_npu")

    class _Broken(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path=None, target=None):
            return importlib.util.spec_from_loader(fullname, self) if fullname == "torch_npu" else None

        def create_module(self, spec):
            return None

        def exec_module(self, module):
            raise ImportError("libascendcl.so: cannot open shared object file")

    monkeypatch.setattr(sys, "meta_path", [_Broken(), *sys.meta_path])
    assert not NpuBackend.is_available()
    assert selection.select_backend_name() == "cpu"
    with pytest.raises(RuntimeError, match="--device npu was requested but is not available"):
        selection.select_backend_name("npu")
    sys.modules.pop("torch_npu", None)


def test_npu_setup_imports_transfer_to_npu_without_mindspeed(fake_npu):
    assert importlib.util.find_spec("mindspeed") is None
    NpuBackend().setup()
    assert fake_npu.imported == ["torch_npu.contrib.transfer_to_npu"]


def test_npu_setup_imports_mindspeed_when_present(fake_mindspeed, caplog):
    with caplog.at_level(logging.INFO, logger="moetrain.device.npu"):
        NpuBackend().setup()
    assert fake_mindspeed.imported == ["torch_npu.contrib.transfer_to_npu", "mindspeed.megatron_adaptor"]
    assert "MindSpeed adaptor loaded" in caplog.text


def test_npu_device_functions(fake_npu):
    backend = NpuBackend()
    assert backend.dist_backend == "hccl" and backend.device_type == "npu"
    backend.set_device(3)
    assert fake_npu.devices == [3]
    assert backend.device_name() == "Ascend910B2"
    assert backend.peak_flops("bf16") == pytest.approx(376e12)
    stats = backend.memory_stats()
    assert (stats.allocated, stats.peak_allocated, stats.reserved) == (1 << 20, 3 << 20, 4 << 20)
    backend.reset_peak_memory()
    assert fake_npu.names() == ["reset_peak"]


def test_npu_table_rms_norm(fake_npu):
    table = NpuBackend().kernel_table()
    x = torch.randn(3, 4, 32, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    w = torch.rand(32).to(torch.bfloat16)
    out = table.rms_norm(x, w, 1e-5)
    assert fake_npu.ops == [("npu_rms_norm", {"dtype": torch.float32, "epsilon": 1e-5})]  # fp32 in
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, rms_norm_reference(x, w, 1e-5))
    assert table.variants["rms_norm"] == "npu_rms_norm"


def test_npu_table_rotary_and_partial_fallback(fake_npu):
    table = NpuBackend().kernel_table()
    t = torch.randn(5, 2, 3, 16)
    angles = torch.outer(torch.arange(5.0), 1.0 / 10000 ** (torch.arange(0, 16, 2) / 16))
    freqs = torch.cat([angles, angles], -1)[:, None, None, :]
    torch.testing.assert_close(table.rotary(t, freqs), rotary_reference(t, freqs))
    assert fake_npu.names() == ["npu_rotary_mul"]
    partial = freqs[..., :8]
    torch.testing.assert_close(table.rotary(t, partial), rotary_reference(t, partial))
    assert fake_npu.names() == ["npu_rotary_mul"]  # partial rotary: the reference, no npu op


def test_npu_table_glu(fake_npu):
    table = NpuBackend().kernel_table()
    x = torch.randn(4, 12)
    torch.testing.assert_close(table.glu(x, "swiglu"), glu_reference(x, "swiglu"))
    assert fake_npu.ops == [("npu_swiglu", {"dim": -1})]
    torch.testing.assert_close(table.glu(x, "geglu", "tanh"), glu_reference(x, "geglu", "tanh"))
    assert fake_npu.names() == ["npu_swiglu"]  # no fused GeGLU: the reference


def test_npu_table_attention(fake_npu):
    table = NpuBackend().kernel_table()
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(2, 4, 6, 8, generator=g), torch.randn(2, 2, 6, 8, generator=g), torch.randn(2, 2, 6, 8, generator=g)
    scale = 1 / math.sqrt(8)
    attend = table.attention_for(None)
    assert attend is table.attention
    torch.testing.assert_close(attend(q, k, v, scale, None, True), attention_reference(q, k, v, scale))
    (name, kwargs), = fake_npu.ops
    assert name == "npu_fusion_attention" and kwargs["head_num"] == 4 and kwargs["keep_prob"] == 1.0
    assert torch.equal(kwargs["mask"], torch.ones(6, 6, dtype=torch.bool).triu(1))  # True = masked out


def test_npu_table_grouped_gemm(fake_npu):
    """The stacked experts' transposed view goes in whole; group ends are cumulative, on the device."""
    table = NpuBackend().kernel_table()
    counts = torch.tensor([2, 0, 3])
    x, w = torch.randn(5, 4), torch.randn(3, 6, 4)  # w: [E, out, in] as GroupedExperts holds it
    torch.testing.assert_close(table.grouped_gemm(x, w.transpose(1, 2), counts),
                               grouped_gemm_reference(x, w.transpose(1, 2), counts))
    (name, kwargs), = fake_npu.ops
    assert name == "npu_grouped_matmul"
    assert kwargs == {"group_list": [2, 2, 5], "split_item": 2, "group_type": 0, "group_list_type": 0}


def test_npu_softcapped_attention_is_the_exact_reference(fake_npu):
    """npu_fusion_attention has no soft-cap: Grok-1 on Ascend keeps its cap through the reference."""
    table = NpuBackend().kernel_table()
    assert table.attention_for(30.0) is attention_reference
    assert table.variants["softcap_attention"] == "torch-reference"
    q = k = v = torch.randn(1, 2, 4, 8)
    torch.testing.assert_close(table.attention_for(30.0)(q, k, v, 0.35, 30.0, True),
                               attention_reference(q, k, v, 0.35, 30.0))
    assert fake_npu.ops == []


# ---------------------------------------------------------------- cuda backend
@pytest.fixture
def fake_flash_attn(monkeypatch):
    calls = []

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, softcap=0.0, **kwargs):
        calls.append({"shape": tuple(q.shape), "softmax_scale": softmax_scale, "causal": causal, "softcap": softcap})
        # flash-attn's layout is [b, s, heads, d]
        out = attention_reference(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale,
                                  softcap or None, causal)
        return out.transpose(1, 2)

    monkeypatch.setitem(sys.modules, "flash_attn", _module("flash_attn", flash_attn_func=flash_attn_func))
    return calls


def test_cuda_table_with_flash_attn_passes_softcap(fake_flash_attn):
    table = CudaBackend().kernel_table()
    assert table.variants["attention"] == table.variants["softcap_attention"] == "flash-attn"
    g = torch.Generator().manual_seed(2)
    q = (torch.randn(2, 4, 6, 8, generator=g) * 8).to(torch.bfloat16)
    k, v = (torch.randn(2, 2, 6, 8, generator=g).to(torch.bfloat16) for _ in range(2))
    attend = table.attention_for(30.0)
    assert attend is table.attention  # flash-attn caps natively
    out = attend(q, k, v, 0.25, 30.0, True)
    assert fake_flash_attn == [{"shape": (2, 6, 4, 8), "softmax_scale": 0.25, "causal": True, "softcap": 30.0}]
    torch.testing.assert_close(out, attention_reference(q, k, v, 0.25, 30.0))
    table.attention_for(None)(q, k, v, 0.25, None, True)
    assert fake_flash_attn[-1]["softcap"] == 0.0  # flash-attn's "no cap"
    # fp32 (flash-attn is fp16/bf16 only): flex (on CPU: uncompiled), flash-attn not called
    table.attention(q.float(), k.float(), v.float(), 0.25, 30.0, True)
    assert len(fake_flash_attn) == 2


def test_cuda_table_without_flash_attn(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import (and find_spec) fails
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "flash_attn" else real_find_spec(name, *a))
    table = CudaBackend().kernel_table()
    assert table.variants["attention"] == "torch-sdpa"
    assert CudaBackend.dist_backend == "nccl"


def test_cuda_torch_rms_norm_equals_reference():
    table = CudaBackend().kernel_table()
    assert table.variants["rms_norm"] == "torch-fused"
    g = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(3, 5, 64, generator=g) * 4).to(dtype)
        w = torch.randn(64, generator=g).to(dtype)
        out = table.rms_norm(x, w, 1e-5)
        assert out.dtype == dtype
        torch.testing.assert_close(out, rms_norm_reference(x, w, 1e-5))


# ---------------------------------------------------------------- model layers use the table
@pytest.mark.multirank
def test_model_layers_call_the_kernel_table():
    (out,) = run_on_ranks(1, model_uses_kernel_table, args=("grok1-tiny",), timeout=180)
    layers = out["num_layers"]
    calls = out["calls"]
    assert out["sandwich"]
    assert calls["rms_norm"] == 4 * layers + 1  # four sandwich norms per layer + the final norm
    assert calls["softcap_attention"] == layers and "attention" not in calls  # Grok-1 is soft-capped
    assert calls["rotary"] == 2 * layers  # q and k
    assert calls["glu"] == layers  # once per MoE layer, on all its routed tokens
    assert calls["grouped_gemm"] == 2 * layers  # fc1 and fc2 of the experts
    assert out["same_output"]  # the recorders delegate, so the logits are unchanged
    # A training step runs each expert projection of each layer as one grouped GEMM: forward (fc1,
    # fc2), and backward's input and weight gradients of both; no per-expert GEMM loop.
    assert out["variants"]["grouped_gemm"] == "torch-grouped-mm"
    assert out["train_step_ops"]["aten::_grouped_mm"] == 6 * layers
