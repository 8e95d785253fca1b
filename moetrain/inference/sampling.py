"""Choosing the next token from the last position's logits: greedy, or temperature / top-k / top-p.

The order is Hugging Face's (temperature, then top-k, then top-p over what is left), so a user's
settings mean what they mean there. Sampling draws from one ``torch.Generator`` seeded with
``--seed`` on the rank that samples, so a run is reproducible and independent of the layout (every
layout produces the same full-vocabulary logits to float tolerance).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    greedy: bool = True
    temperature: float = 0.7
    top_k: int = 50  # 0: no top-k filter
    top_p: float = 0.95  # 1.0: no nucleus filter

    def check(self) -> list[str]:
        problems = []
        if not self.greedy:
            if self.temperature <= 0:
                problems.append(f"--temperature must be > 0 for sampling, got {self.temperature} "
                                "(use --task greedy for deterministic output)")
            if self.top_k < 0:
                problems.append(f"--top-k must be >= 0 (0: off), got {self.top_k}")
            if not 0 < self.top_p <= 1:
                problems.append(f"--top-p must be in (0, 1], got {self.top_p}")
        return problems


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """[b, V] fp32 logits -> the same with -inf outside top-k / top-p (after temperature)."""
    logits = logits / params.temperature
    if 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token once the mass *before* it reaches top_p: the most likely token always stays.
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_tokens(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """[b, V] logits (fp32, the real vocabulary only) -> [b] token ids."""
    logits = logits.float()
    if params.greedy:
        return logits.argmax(dim=-1)
    # Drawn on the CPU with the CPU generator: the same draws whatever the device (NPU / CUDA / CPU).
    probs = torch.softmax(filter_logits(logits, params), dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
