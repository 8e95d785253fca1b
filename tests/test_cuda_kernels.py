"""The CUDA kernels on a GPU: compiled flex_attention (soft-capped) against the torch reference.

Skipped without a GPU. Grok-1-like shape with fewer heads: 8 query heads, 2 KV heads, head dim 128,
seq 2048, soft-cap 30, q scaled so that the cap matters. The truth is the reference in fp32 on the
same (rounded) inputs. Tolerances, relative to the norm and elementwise to the largest entry:
bf16 has an 8-bit mantissa (eps 3.9e-3) and flex rounds P and dS to bf16 before its matmuls, so a
few eps: 2e-2; fp32: 2e-3, TF32's eps (NVIDIA containers may force TF32 on the reference's cuBLAS
matmuls: TORCH_ALLOW_TF32_CUBLAS_OVERRIDE). A wrong cap or mask errs by >0.1 (checked: uncapped).
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from moetrain.device.cuda import CudaBackend
from moetrain.kernels.attention import attention_reference
from moetrain.kernels.attention_flex import attention_flex
from moetrain.training.sft_data import isolation_mask

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SEQ, HEADS, KV_HEADS, HEAD_DIM, SOFTCAP = 2048, 8, 2, 128, 30.0
SCALE = HEAD_DIM ** -0.5
TOL = {torch.bfloat16: 2e-2, torch.float32: 2e-3}


def _inputs(b, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, HEADS, SEQ, HEAD_DIM, generator=g) * 8  # scores up to ~40: past the cap
    k, v = (torch.randn(b, KV_HEADS, SEQ, HEAD_DIM, generator=g) for _ in range(2))
    grad_out = torch.randn(b, HEADS, SEQ, HEAD_DIM, generator=g)
    return [t.to("cuda", dtype) for t in (q, k, v)], grad_out.to("cuda", dtype)


def _packed(seed):
    """b=2 rows of SEQ tokens, 3 samples each, cut at random places."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(2):
        cuts = sorted(torch.randint(1, SEQ, (2,), generator=g).tolist())
        lengths = [cuts[0], cuts[1] - cuts[0], SEQ - cuts[1]]
        rows.append([i + 1 for i, n in enumerate(lengths) for _ in range(n)])
    return isolation_mask(torch.tensor(rows)).to("cuda")


def _fwd_bwd(attend, qkv, grad_out, mask, softcap=SOFTCAP):
    q, k, v = (t.detach().requires_grad_() for t in qkv)
    out = attend(q, k, v, SCALE, softcap, True, mask)
    out.backward(grad_out)
    return [out.detach(), q.grad, k.grad, v.grad]


def _check(got, want, dtype):
    tol = TOL[dtype]
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        rel = ((a.float() - b).norm() / b.norm()).item()
        assert rel < tol, f"{name}: relative error {rel:.2e} >= {tol}"
        torch.testing.assert_close(a.float(), b, atol=tol * b.abs().max().item(), rtol=tol,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("packed", [False, True], ids=["causal", "packed"])
def test_compiled_flex_equals_reference(dtype, packed):
    b = 2 if packed else 1
    qkv, grad_out = _inputs(b, dtype)
    mask = _packed(0) if packed else None
    got = _fwd_bwd(attention_flex, qkv, grad_out, mask)
    truth = _fwd_bwd(attention_reference, [t.float() for t in qkv], grad_out.float(), mask)
    _check(got, truth, dtype)
    with torch.no_grad():  # the cap matters at these scores (the reference: no extra compile)
        uncapped = attention_reference(*[t.float() for t in qkv], SCALE, None, True, mask)
    assert (uncapped - truth[0]).abs().max() > 0.1
    # Same shape again (the next step, another packing): the compiled kernel is reused.
    with torch._dynamo.config.patch(error_on_recompile=True):
        mask = _packed(1) if packed else None
        got = _fwd_bwd(attention_flex, qkv, grad_out, mask)
    truth = _fwd_bwd(attention_reference, [t.float() for t in qkv], grad_out.float(), mask)
    _check(got, truth, dtype)


def test_flex_peak_memory_is_below_the_reference():
    """fwd+bwd at seq 2048, bf16: the reference holds several fp32 [1, 8, 2048, 2048] score
    tensors (128 MiB each); flex holds none (measured through the CUDA backend's allocator stats)."""
    backend = CudaBackend()
    qkv, grad_out = _inputs(1, torch.bfloat16)
    _fwd_bwd(attention_flex, qkv, grad_out, None)  # compiled (cached from the test above, or now)
    peaks = {}
    for name, attend in (("reference", attention_reference), ("flex", attention_flex)):
        backend.synchronize()
        before = backend.memory_stats().allocated
        backend.reset_peak_memory()
        _fwd_bwd(attend, qkv, grad_out, None)
        backend.synchronize()
        peaks[name] = backend.memory_stats().peak_allocated - before
    scores = 1 * HEADS * SEQ * SEQ * 4
    assert peaks["reference"] > 2 * scores, peaks
    assert peaks["flex"] < scores / 4, peaks
