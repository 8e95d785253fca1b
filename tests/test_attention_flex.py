"""attention_flex (flex_attention, soft-capped) against attention_reference on CPU, and its wiring.

On CPU flex runs uncompiled (torch's math path over the same score_mod / mask_mod / BlockMask the
fused GPU kernel compiles), so these check moetrain's soft-cap, masks and GQA, not the kernel; the
compiled kernel is checked on a GPU in tests/test_cuda_kernels.py. torch 2.13 refuses flex inputs
that require grad on CPU, so attention_flex falls back to the reference there; the backward tests
lift that guard (``flex_backward_on_cpu``) to differentiate flex's own math path.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import torch.nn.attention.flex_attention as torch_flex
from test_device_wiring import fake_flash_attn  # noqa: F401 (a fixture; tests/ is on sys.path)

from moetrain.device.cuda import CudaBackend
from moetrain.kernels import attention_flex as flex_module
from moetrain.kernels.attention import attention_reference
from moetrain.kernels.attention_flex import attention_flex
from moetrain.kernels.table import apply_overrides, reference_table
from moetrain.training.sft_data import isolation_mask

SCALE, SOFTCAP = 0.25, 30.0
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture
def flex_backward_on_cpu(monkeypatch):
    """Let flex's eager (math) backward run on CPU: torch guards it off in ``_validate_device``."""
    monkeypatch.setattr(torch_flex, "_validate_device", lambda *tensors: None)
    monkeypatch.setattr(flex_module, "_flex_can_differentiate", lambda device: True)


@pytest.fixture
def flex_calls(monkeypatch):
    """Counts calls that reach flex_attention (not the reference fallback)."""
    calls = []
    real = flex_module._flex_fn

    def counting(compiled):
        calls.append(compiled)
        return real(compiled)

    monkeypatch.setattr(flex_module, "_flex_fn", counting)
    return calls


def _qkv(b, sq, sk, heads=8, kv_heads=2, d=16, q_scale=8.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    # q scaled by 8: scores reach past the cap of 30 (checked in test_scores_saturate_the_cap)
    q = torch.randn(b, heads, sq, d, generator=g) * q_scale
    k, v = (torch.randn(b, kv_heads, sk, d, generator=g) for _ in range(2))
    return q, k, v


def _packed_mask():
    # 3 samples in a row of 64, two different packings
    ids = torch.tensor([[1] * 20 + [2] * 30 + [3] * 14, [1] * 7 + [2] * 41 + [3] * 16])
    return isolation_mask(ids)  # [2, 1, 64, 64], True = not allowed


CASES = {
    "causal_softcap_gqa": dict(b=2, sq=64, sk=64, softcap=SOFTCAP, causal=True, mask=None),
    "packed_samples": dict(b=2, sq=64, sk=64, softcap=SOFTCAP, causal=True, mask=_packed_mask()),
    # Uncapped scores of 40 make the softmax one-hot, whose fp32 gradients differ by ~1e-5 between
    # any two summation orders: unscaled q here.
    "no_softcap": dict(b=2, sq=64, sk=64, softcap=None, causal=True, mask=None, q_scale=1.0),
    "kv_cache_sq1": dict(b=2, sq=1, sk=40, softcap=SOFTCAP, causal=True, mask=None),
    "kv_cache_sq4": dict(b=2, sq=4, sk=40, softcap=SOFTCAP, causal=True, mask=None),
}


def test_scores_saturate_the_cap():
    """The inputs make the cap matter: without it the outputs differ far beyond the tolerance."""
    q, k, v = _qkv(2, 64, 64)
    scores = (q.reshape(2, 2, 4, 64, 16) @ k.unsqueeze(2).transpose(-1, -2)) * SCALE
    assert scores.abs().max() > 1.4 * SOFTCAP  # capped to < 0.89 x the score: far from the identity
    capped = attention_reference(q, k, v, SCALE, SOFTCAP)
    assert (capped - attention_reference(q, k, v, SCALE, None)).abs().max() > 0.1
    with torch.no_grad():
        assert (attention_flex(q, k, v, SCALE, None) - capped).abs().max() > 0.1


@pytest.mark.parametrize("case", list(CASES))
def test_forward_and_backward_equal_the_reference(case, flex_backward_on_cpu, flex_calls):
    c = CASES[case]
    q, k, v = (t.requires_grad_() for t in _qkv(c["b"], c["sq"], c["sk"], q_scale=c.get("q_scale", 8.0)))
    args = (SCALE, c["softcap"], c["causal"], c["mask"])
    out, ref = attention_flex(q, k, v, *args), attention_reference(q, k, v, *args)
    assert flex_calls == [False] and out.dtype == q.dtype
    torch.testing.assert_close(out, ref, **TOL)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad_out)
    for name, got, want in zip("qkv", grads, ref_grads):
        torch.testing.assert_close(got, want, **TOL, msg=lambda m, name=name: f"grad of {name}: {m}")


def test_cpu_uses_flex_forward_only(flex_calls):
    """Without the guard lifted: no grad -> flex; grads needed on CPU -> the reference, exactly."""
    q, k, v = _qkv(1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(attention_flex(q, k, v, SCALE, SOFTCAP), attention_reference(q, k, v, SCALE, SOFTCAP),
                                   **TOL)
    assert flex_calls == [False]
    q.requires_grad_()
    out = attention_flex(q, k, v, SCALE, SOFTCAP)
    assert flex_calls == [False]  # the reference ran
    torch.testing.assert_close(out, attention_reference(q, k, v, SCALE, SOFTCAP), atol=0, rtol=0)


def test_reference_fallbacks(flex_calls):
    """Attention dropout, and a compiled call with sq != sk (a decode step: sk grows every token,
    which would recompile the static-shape kernel), run the reference."""
    q, k, v = _qkv(1, 1, 40)
    with torch.no_grad():
        out = attention_flex(q, k, v, SCALE, SOFTCAP, compiled=True)
        torch.testing.assert_close(out, attention_reference(q, k, v, SCALE, SOFTCAP), atol=0, rtol=0)
        torch.manual_seed(0)
        dropped = attention_flex(*_qkv(1, 64, 64), SCALE, SOFTCAP, dropout_p=0.5)
        torch.manual_seed(0)
        torch.testing.assert_close(dropped, attention_reference(*_qkv(1, 64, 64), SCALE, SOFTCAP, dropout_p=0.5))
    assert flex_calls == []


def test_block_masks_are_cached():
    causal = flex_module._causal_block_mask(64, 64, torch.device("cpu"))
    assert flex_module._causal_block_mask(64, 64, torch.device("cpu")) is causal
    assert flex_module._causal_block_mask(4, 40, torch.device("cpu")) is not causal
    mask = _packed_mask()
    dense = flex_module._dense_block_mask(mask, 8, 64, 64, True)
    assert flex_module._dense_block_mask(mask, 8, 64, 64, True) is dense  # every layer of a step
    assert flex_module._dense_block_mask(_packed_mask(), 8, 64, 64, True) is not dense  # the next batch
    mask[0, 0, 5, 0] = True  # changed in place: rebuilt
    again = flex_module._dense_block_mask(mask, 8, 64, 64, True)
    assert again is not dense
    assert flex_module._softcap_score_mod(30.0) is flex_module._softcap_score_mod(30.0)  # no recompiles


# ---------------------------------------------------------------- CUDA backend wiring (on CPU)
def _without_flash_attn(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "flash_attn" else real_find_spec(name, *a))


def test_cuda_table_uses_flex_without_flash_attn(monkeypatch):
    _without_flash_attn(monkeypatch)
    table = CudaBackend().kernel_table()
    assert table.softcap_attention is attention_flex and table.variants["softcap_attention"] == "flex"
    assert table.attention_for(SOFTCAP) is attention_flex
    assert table.variants["attention"] == "torch-sdpa"  # uncapped attention stays on SDPA


def test_cuda_table_uses_flash_attn_when_installed(fake_flash_attn):  # noqa: F811
    table = CudaBackend().kernel_table()
    assert table.variants["softcap_attention"] == "flash-attn"
    assert table.softcap_attention is not attention_flex


def test_kernels_env_selects_flex_or_the_reference(monkeypatch, fake_flash_attn):  # noqa: F811
    backend = CudaBackend()
    table = apply_overrides(backend.kernel_table(), "softcap_attention=flex", backend.kernel_variants())
    assert table.softcap_attention is attention_flex and table.variants["softcap_attention"] == "flex"
    table = apply_overrides(table, "softcap_attention=torch-reference", backend.kernel_variants())
    assert table.softcap_attention is attention_reference
    assert table.variants["softcap_attention"] == "torch-reference"
    # Not a CPU variant: on CPU flex has no backward (torch 2.13), so training would get the reference.
    with pytest.raises(ValueError, match="softcap_attention has no variant 'flex'"):
        apply_overrides(reference_table(), "softcap_attention=flex")
