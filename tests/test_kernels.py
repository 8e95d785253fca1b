"""Reference kernels against straightforward formulas written out in the test."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from moetrain.kernels.activations import activation_function, glu_reference
from moetrain.kernels.attention import attention_reference, attention_sdpa
from moetrain.kernels.grouped_gemm import grouped_gemm_reference, grouped_gemm_torch
from moetrain.kernels.rms_norm import rms_norm_reference
from moetrain.kernels.rotary import rotary_reference
from moetrain.kernels.table import apply_overrides, get_kernels, override_kernels, reference_table


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- RMSNorm
def test_rms_norm_bf16_input_is_normalised_in_fp32():
    x = torch.randn(3, 5, 64, generator=_gen()).mul(7).to(torch.bfloat16)
    w = torch.randn(64, generator=_gen(1)).to(torch.bfloat16)
    eps = 1e-5
    out = rms_norm_reference(x, w, eps)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    xd, wd = x.double(), w.double()
    expected = wd * xd / torch.sqrt((xd * xd).mean(-1, keepdim=True) + eps)
    # One bf16 rounding of the fp32 result, nothing more.
    torch.testing.assert_close(out, expected.to(torch.bfloat16), rtol=0, atol=0)
    # A bf16 computation would round the statistics too: the fp32 path is measurably different.
    x16 = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    assert not torch.equal(x16, out)


def test_rms_norm_eps_and_weight():
    x = torch.zeros(2, 8)
    assert torch.equal(rms_norm_reference(x, torch.ones(8), 1e-5), x)  # eps keeps zeros finite
    x = torch.full((1, 4), 2.0)
    torch.testing.assert_close(rms_norm_reference(x, torch.tensor([1.0, 2.0, 3.0, 4.0]), 0.0),
                               torch.tensor([[1.0, 2.0, 3.0, 4.0]]))


# ---------------------------------------------------------------- rotary
def _freqs(seq: int, rot_dim: int, base: float = 10000.0) -> torch.Tensor:
    inv = 1.0 / base ** (torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim)
    angles = torch.outer(torch.arange(seq, dtype=torch.float64), inv)  # [s, rot/2]
    return torch.cat([angles, angles], dim=-1).float()[:, None, None, :]  # [s, 1, 1, rot]


def _rope_explicit(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Pairs (i, i + d/2) rotated by angle theta_i, written element by element."""
    out = t.clone()
    d = freqs.shape[-1]
    half = d // 2
    for i in range(half):
        theta = freqs[..., i]
        a, b = t[..., i], t[..., i + half]
        out[..., i] = a * theta.cos() - b * theta.sin()
        out[..., i + half] = b * theta.cos() + a * theta.sin()
    return out


def test_rotary_matches_explicit_rotate_half():
    t = torch.randn(6, 2, 3, 16, generator=_gen())  # [s, b, heads, head_dim]
    freqs = _freqs(6, 16)
    torch.testing.assert_close(rotary_reference(t, freqs), _rope_explicit(t, freqs))
    # Position 0 is the identity; norms of each rotated pair are preserved.
    torch.testing.assert_close(rotary_reference(t, freqs)[0], t[0])
    torch.testing.assert_close(rotary_reference(t, freqs).norm(dim=-1), t.norm(dim=-1))


def test_partial_rotary_passes_remaining_channels_through():
    t = torch.randn(5, 1, 2, 16, generator=_gen(3))
    freqs = _freqs(5, 8)
    out = rotary_reference(t, freqs)
    assert out.shape == t.shape
    assert torch.equal(out[..., 8:], t[..., 8:])
    torch.testing.assert_close(out[..., :8], _rope_explicit(t[..., :8], freqs))


# ---------------------------------------------------------------- GLU
def test_glu_swiglu_and_geglu():
    x = torch.randn(4, 2 * 6, generator=_gen())
    gate, up = x[:, :6], x[:, 6:]
    silu = gate / (1 + torch.exp(-gate))
    torch.testing.assert_close(glu_reference(x, "swiglu"), silu * up)
    gelu_exact = 0.5 * gate * (1 + torch.erf(gate / math.sqrt(2)))
    torch.testing.assert_close(glu_reference(x, "geglu"), gelu_exact * up)
    gelu_tanh = 0.5 * gate * (1 + torch.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate**3)))
    torch.testing.assert_close(glu_reference(x, "geglu", "tanh"), gelu_tanh * up)
    # exact and tanh GELU are different functions (Grok-1 makes it a choice)
    assert not torch.allclose(glu_reference(x, "geglu"), glu_reference(x, "geglu", "tanh"), atol=1e-6)


def test_unknown_activation_is_an_error():
    with pytest.raises(ValueError, match="relu"):
        activation_function("relu")


# ---------------------------------------------------------------- attention
def _qkv(b=2, heads=4, groups=4, s=7, d=8, seed=0, dtype=torch.float32):
    g = _gen(seed)
    q = torch.randn(b, heads, s, d, generator=g, dtype=dtype)
    k = torch.randn(b, groups, s, d, generator=g, dtype=dtype)
    v = torch.randn(b, groups, s, d, generator=g, dtype=dtype)
    return q, k, v


def _attention_by_hand(q, k, v, scale, softcap=None, causal=True):
    """Row by row: scores, soft-cap, causal mask, softmax, weighted values (GQA: head h uses group h // rep)."""
    b, heads, s, _ = q.shape
    rep = heads // k.shape[1]
    out = torch.zeros_like(q, dtype=torch.float64)
    for bi in range(b):
        for h in range(heads):
            kk, vv = k[bi, h // rep].double(), v[bi, h // rep].double()
            for i in range(s):
                scores = (kk @ q[bi, h, i].double()) * scale  # [s]
                if softcap is not None:
                    scores = softcap * torch.tanh(scores / softcap)
                if causal:
                    scores[i + 1:] = float("-inf")
                p = torch.exp(scores - scores.max())
                out[bi, h, i] = (p / p.sum()) @ vv
    return out.to(q.dtype)


def test_attention_reference_equals_sdpa_without_softcap():
    q, k, v = _qkv()
    scale = 1 / math.sqrt(8)
    for causal in (True, False):
        torch.testing.assert_close(attention_sdpa(q, k, v, scale, None, causal),
                                   attention_reference(q, k, v, scale, None, causal), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attention_reference(q, k, v, scale), _attention_by_hand(q, k, v, scale),
                               rtol=1e-5, atol=1e-5)


def test_softcapped_attention_matches_hand_formula():
    q, k, v = _qkv(seed=1)
    q = q * 10  # scores of order 30+: the cap is active
    scale = 1 / math.sqrt(8)
    out = attention_reference(q, k, v, scale, softcap=5.0)
    torch.testing.assert_close(out, _attention_by_hand(q, k, v, scale, softcap=5.0), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, attention_reference(q, k, v, scale), atol=1e-3)
    # SDPA cannot soft-cap: it must hand the capped case to the reference.
    torch.testing.assert_close(attention_sdpa(q, k, v, scale, softcap=5.0), out)


def test_gqa_expansion():
    q, k, v = _qkv(heads=6, groups=2, seed=2)
    scale = 0.3
    out = attention_reference(q, k, v, scale)
    torch.testing.assert_close(out, _attention_by_hand(q, k, v, scale), rtol=1e-5, atol=1e-5)
    expanded = attention_reference(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), scale)
    torch.testing.assert_close(out, expanded)
    torch.testing.assert_close(attention_sdpa(q, k, v, scale), out, rtol=1e-5, atol=1e-5)


def test_causal_masking():
    q, k, v = _qkv(seed=3)
    scale = 0.35
    out = attention_reference(q, k, v, scale, causal=True)
    # Row 0 attends only to position 0: the output is v[0] exactly.
    torch.testing.assert_close(out[:, :, 0], v[:, :, 0])
    # Changing future keys/values does not change earlier rows.
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 4:] += 1.0
    v2[:, :, 4:] -= 2.0
    torch.testing.assert_close(attention_reference(q, k2, v2, scale)[:, :, :4], out[:, :, :4])
    # An explicit boolean mask (True = not allowed) with causal=False is the same thing.
    s = q.shape[2]
    mask = torch.ones(s, s, dtype=torch.bool).triu(1)
    torch.testing.assert_close(attention_reference(q, k, v, scale, causal=False, mask=mask), out)
    torch.testing.assert_close(attention_sdpa(q, k, v, scale, causal=False, mask=mask), out, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- grouped GEMM
def test_grouped_gemm_matches_per_expert_loop_with_an_empty_expert():
    g = _gen()
    counts = [3, 0, 5, 2]
    x = torch.randn(sum(counts), 6, generator=g)
    w = torch.randn(len(counts), 6, 4, generator=g)
    out = grouped_gemm_reference(x, w, torch.tensor(counts))
    assert out.shape == (10, 4)
    rows, start = [], 0
    for e, n in enumerate(counts):
        for t in range(start, start + n):
            rows.append(x[t] @ w[e])
        start += n
    torch.testing.assert_close(out, torch.stack(rows))
    # no tokens at all
    empty = grouped_gemm_reference(x[:0], w, torch.zeros(4, dtype=torch.long))
    assert empty.shape == (0, 4)


@pytest.mark.parametrize("counts", [[3, 0, 5, 2], [0, 0, 0, 7], [0, 0, 0, 0]])
def test_torch_grouped_mm_equals_the_loop_forward_and_backward(counts):
    """One torch._grouped_mm (both directions) against the loop, on the stacked nn.Linear layout
    [experts, out, in] seen through its transpose, as GroupedExperts passes it. Empty experts get
    a zero weight gradient."""
    g = _gen()
    w = torch.randn(len(counts), 12, 8, generator=g)  # widths of 16-byte rows, as _grouped_mm needs
    x = torch.randn(sum(counts), 8, generator=g)
    grad = torch.randn(sum(counts), 12, generator=g)
    results = []
    for gemm in (grouped_gemm_reference, grouped_gemm_torch):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = gemm(xi, wi.transpose(1, 2), torch.tensor(counts))
        out.backward(grad)
        results.append((out.detach(), xi.grad, wi.grad))
    (ref_out, ref_dx, ref_dw), (out, dx, dw) = results
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-6, atol=1e-6)
    # The loop gives unused experts no gradient (None -> zeros); the grouped kernel writes zeros.
    torch.testing.assert_close(dw, ref_dw if ref_dw is not None else torch.zeros_like(w), rtol=1e-6, atol=1e-6)
    for e, n in enumerate(counts):
        if n == 0:
            assert float(dw[e].abs().max()) == 0.0


def test_grouped_gemm_with_unaligned_widths_takes_the_loop():
    x, w, counts = torch.randn(5, 6), torch.randn(2, 7, 6), torch.tensor([2, 3])  # 24- and 28-byte rows
    torch.testing.assert_close(grouped_gemm_torch(x, w.transpose(1, 2), counts),
                               grouped_gemm_reference(x, w.transpose(1, 2), counts))


def test_torch_grouped_mm_backward_takes_a_broadcast_gradient():
    """torch's own derivative of _grouped_mm refuses the expanded gradient of ``out.sum()``."""
    x = torch.randn(5, 4, requires_grad=True)
    w = torch.randn(2, 8, 4, requires_grad=True)
    grouped_gemm_torch(x, w.transpose(1, 2), torch.tensor([2, 3])).sum().backward()
    ref_x, ref_w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    grouped_gemm_reference(ref_x, ref_w.transpose(1, 2), torch.tensor([2, 3])).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad)
    torch.testing.assert_close(w.grad, ref_w.grad)


# ---------------------------------------------------------------- table
def test_reference_table_and_override():
    table = reference_table()
    assert table.attention is attention_sdpa and table.rms_norm is rms_norm_reference
    assert table.attention_for(30.0) is attention_reference  # soft-capped: the exact reference
    assert table.attention_for(None) is attention_sdpa
    assert table.grouped_gemm is grouped_gemm_torch and table.variants["grouped_gemm"] == "torch-grouped-mm"
    before = get_kernels()

    def fake(*args):
        return "fake"

    with override_kernels(rms_norm=fake) as active:
        assert get_kernels() is active and active.rms_norm is fake
        assert active.attention is before.attention
    assert get_kernels() is before
    with pytest.raises(TypeError):
        with override_kernels(not_a_kernel=fake):
            pass
    assert get_kernels() is before
    assert F.silu is activation_function("swiglu")


def test_kernel_overrides_by_variant_name(monkeypatch):
    table = apply_overrides(reference_table(), "grouped_gemm=torch-loop, attention=torch-reference")
    assert table.grouped_gemm is grouped_gemm_reference and table.attention is attention_reference
    assert table.variants["grouped_gemm"] == "torch-loop" and table.variants["attention"] == "torch-reference"
    assert apply_overrides(reference_table(), "") == reference_table()
    with pytest.raises(ValueError, match="unknown kernel 'expert_gemm'.*kernels: attention"):
        apply_overrides(reference_table(), "expert_gemm=torch-loop")
    with pytest.raises(ValueError, match="grouped_gemm has no variant 'cutlass' here; choose from torch-loop"):
        apply_overrides(reference_table(), "grouped_gemm=cutlass")
    # The device setup applies MOETRAIN_KERNELS to the backend's table.
    from moetrain.device.cpu import CpuBackend
    from moetrain.device.selection import kernel_table_for

    monkeypatch.setenv("MOETRAIN_KERNELS", "grouped_gemm=torch-loop")
    assert kernel_table_for(CpuBackend()).variants["grouped_gemm"] == "torch-loop"


def test_sdpa_causal_with_fewer_queries_than_keys_is_bottom_right_aligned():
    """A KV-cached query block (sq < sk) sees keys up to its own position, in both kernels."""
    from moetrain.kernels.attention import attention_sdpa

    q, _, _ = _qkv(heads=4, groups=2, s=3, seed=4)
    _, k, v = _qkv(heads=4, groups=2, s=7, seed=5)
    torch.testing.assert_close(attention_sdpa(q, k, v, 0.3, None, True), attention_reference(q, k, v, 0.3, None, True))
