"""Grouped GEMM for MoE experts: tokens sorted by expert, one weight matrix per expert.

Signature of every variant: ``grouped_gemm(x, weights, tokens_per_expert) -> [tokens, out]`` with
  x                 [tokens, in], rows grouped by expert in expert order;
  weights           [experts, in, out] (moetrain passes the transposed view of the stacked
                    nn.Linear-style parameter [experts, out, in]: nothing is copied);
  tokens_per_expert [experts] integer tensor on x's device, summing to tokens.
"""

from __future__ import annotations

import torch


def grouped_gemm_reference(x: torch.Tensor, weights: torch.Tensor, tokens_per_expert: torch.Tensor) -> torch.Tensor:
    """A loop of per-expert GEMMs. Reads the counts on the host (one sync per call)."""
    counts = [int(n) for n in tokens_per_expert.tolist()]
    outputs = [chunk @ weights[e] for e, chunk in enumerate(torch.split(x, counts, dim=0))]
    if not outputs:
        return x.new_zeros(0, weights.shape[-1])
    return torch.cat(outputs, dim=0)


def grouped_gemm_torch(x: torch.Tensor, weights: torch.Tensor, tokens_per_expert: torch.Tensor) -> torch.Tensor:
    """One ``torch._grouped_mm`` call: the group ends (cumulative counts, int32) stay on the device,
    so there is no host sync. Its autograd formula is a grouped GEMM too (dx: [tokens, out] x
    [experts, out, in]; dw: offsets along the token dim), so backward has no per-expert loop either."""
    if not _aligned(x, weights):
        return grouped_gemm_reference(x, weights, tokens_per_expert)
    offsets = torch.cumsum(tokens_per_expert, 0, dtype=torch.int32)
    return _GroupedMM.apply(x, weights, offsets)


def _aligned(x: torch.Tensor, weights: torch.Tensor) -> bool:
    """torch._grouped_mm wants 16-byte aligned rows and base pointers (in, out * element size);
    odd widths (e.g. an FFN split unevenly over expert-TP) take the loop instead."""
    size = x.element_size()
    dims_ok = all(d * size % 16 == 0 for d in (x.shape[-1], weights.shape[-1], weights.shape[-2]))
    return dims_ok and x.data_ptr() % 16 == 0 and weights.data_ptr() % 16 == 0


class _GroupedMM(torch.autograd.Function):
    """``torch._grouped_mm`` whose backward accepts any incoming gradient layout (torch's own
    derivative refuses broadcast gradients, e.g. the one ``out.sum()`` produces)."""

    @staticmethod
    def forward(ctx, x, weights, offsets):
        ctx.save_for_backward(x, weights, offsets)
        return torch._grouped_mm(x, weights, offs=offsets)

    @staticmethod
    def backward(ctx, grad_out):
        x, weights, offsets = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch._grouped_mm(grad_out, weights.transpose(-2, -1), offs=offsets)  # [tokens, in]
        if ctx.needs_input_grad[1]:
            # [in, tokens] x [tokens, out] grouped along tokens -> [experts, in, out]
            grad_w = torch._grouped_mm(x.t(), grad_out, offs=offsets)
        return grad_x, grad_w, None


def grouped_mm_available() -> bool:
    """torch >= 2.9: a fused kernel on CUDA SM90+ in bf16; elsewhere (other GPUs and dtypes, CPU)
    torch's own per-group fallback, the same math. torch 2.8 has the op without a CPU kernel."""
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return hasattr(torch, "_grouped_mm") and (major, minor) >= (2, 9)
