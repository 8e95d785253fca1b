"""Grouped GEMM for MoE experts: tokens sorted by expert, one weight matrix per expert."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def grouped_gemm_reference(x: torch.Tensor, weights: torch.Tensor | Sequence[torch.Tensor],
                           tokens_per_expert: list[int]) -> torch.Tensor:
    """x: [tokens, in] (grouped by expert, in expert order); weights: [experts, in, out], or one
    [in, out] tensor per expert (e.g. transposed views of nn.Linear weights, so nothing is copied);
    tokens_per_expert: python ints summing to tokens. Returns [tokens, out]."""
    outputs = [chunk @ weights[e] for e, chunk in enumerate(torch.split(x, tokens_per_expert, dim=0))]
    if not outputs:
        return x.new_zeros(0, weights[0].shape[-1])
    return torch.cat(outputs, dim=0)
