"""Activations for gated MLPs (SwiGLU for Llama/Mixtral, GeGLU for Grok-1)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def activation_function(name: str, gelu_approximate: str = "none"):
    """The element-wise activation applied to the gate branch: 'swiglu' -> silu, 'geglu' -> gelu."""
    if name == "swiglu":
        return F.silu
    if name == "geglu":
        # Exact (erf) GELU is the HF port's; "tanh" is xAI's JAX original.
        return functools.partial(F.gelu, approximate=gelu_approximate)
    raise ValueError(f"unknown gated activation {name!r}; expected 'swiglu' or 'geglu'")


def glu_reference(x: torch.Tensor, activation: str, gelu_approximate: str = "none") -> torch.Tensor:
    """x: [..., 2*ffn] laid out [gate; up] -> act(gate) * up: [..., ffn]."""
    gate, up = x.chunk(2, dim=-1)
    return activation_function(activation, gelu_approximate)(gate) * up
