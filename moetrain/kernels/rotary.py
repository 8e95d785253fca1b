"""Rotary position embedding in the rotate-half layout (HF Llama / Grok-1, megatron-core's default)."""

from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def rotary_reference(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Apply RoPE. t: [s, b, heads, head_dim]; freqs: [s, 1, 1, rot_dim] angles (rot_dim <= head_dim).

    Only the first rot_dim channels rotate; the rest pass through (partial rotary).
    """
    rot_dim = freqs.shape[-1]
    t_rot, t_pass = t[..., :rot_dim], t[..., rot_dim:]
    cos, sin = freqs.cos().to(t.dtype), freqs.sin().to(t.dtype)
    t_rot = t_rot * cos + rotate_half(t_rot) * sin
    return torch.cat((t_rot, t_pass), dim=-1) if t_pass.numel() else t_rot
