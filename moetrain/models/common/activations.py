"""Gated activation module for megatron-core MLP specs, computed by the kernel table."""

from __future__ import annotations

import torch

from moetrain.kernels import get_kernels


class GatedActivation(torch.nn.Module):
    """[..., 2*ffn] laid out [gate; up] -> act(gate) * up: [..., ffn] (SwiGLU or GeGLU).

    Plugged in as ``MLPSubmodules.activation_func`` with ``config.use_te_activation_func=True``:
    megatron-core then hands the whole fc1 output to this module, so the kernel table's fused GLU
    (npu_swiglu on Ascend) is used instead of megatron-core's own chunk-and-multiply.
    """

    def __init__(self, config, activation: str = "swiglu", gelu_approximate: str = "none") -> None:
        super().__init__()
        del config
        self.activation = activation
        self.gelu_approximate = gelu_approximate

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None) -> dict:
        """Stateless; megatron-core's MLP asks every submodule for a sharded state dict."""
        del prefix, sharded_offsets, metadata
        return {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return get_kernels().glu(x, self.activation, self.gelu_approximate)
