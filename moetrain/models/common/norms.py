"""RMSNorm for megatron-core layer specs, computed by the kernel table (fp32 statistics).

megatron-core's ``WrappedTorchNorm`` refuses ``sequence_parallel=True``, which MoE + TP requires,
so the specs use this module everywhere (layer norms and the final norm).
"""

from __future__ import annotations

import torch

from moetrain.kernels import get_kernels


class RMSNorm(torch.nn.Module):
    """Signature matches what megatron-core's ``build_module`` passes to a norm spec."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        # Under sequence parallelism each TP rank normalises different tokens, so megatron-core's
        # finalize_model_grads all-reduces grads of params tagged ``sequence_parallel`` over TP.
        self.weight.sequence_parallel = bool(config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return get_kernels().rms_norm(x, self.weight, self.eps)
