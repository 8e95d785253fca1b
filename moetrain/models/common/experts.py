"""MoE experts computed as two grouped GEMMs of the kernel table.

Parameters are exactly megatron-core's SequentialMLP's (``local_experts.{j}.linear_fc1.weight``
[2*ffn, hidden] = [gate; up], ``local_experts.{j}.linear_fc2.weight`` [hidden, ffn]), so checkpoints,
dist-checkpointing and the HF weight maps are unchanged; only the computation differs: instead of
one small MLP call per expert, the tokens of all local experts go through the kernel table's
``grouped_gemm`` (a loop of GEMMs in the torch reference, npu_grouped_matmul on Ascend), with the
per-expert weights passed as transposed *views* (no copy).
"""

from __future__ import annotations

import torch
from megatron.core.transformer.moe.experts import SequentialMLP

from moetrain.kernels import get_kernels


class GroupedGemmExperts(SequentialMLP):
    def _use_upstream(self) -> bool:
        # Expert-TP > 1 needs the parallel linears' collectives; fp8 / fp4 need their padding.
        return (self.tp_group.size() > 1 or bool(self.config.fp8) or bool(self.config.fp4)
                or self.config.moe_apply_probs_on_input)

    def forward(self, permuted_local_hidden_states: torch.Tensor, tokens_per_expert: torch.Tensor,
                permuted_probs: torch.Tensor):
        """permuted_local_hidden_states: [tokens, hidden], grouped by local expert in expert order;
        tokens_per_expert: [local experts]; permuted_probs: [tokens] routing weights."""
        if self._use_upstream():
            return super().forward(permuted_local_hidden_states, tokens_per_expert, permuted_probs)
        counts = [int(n) for n in tokens_per_expert.tolist()]
        kernels = get_kernels()
        fc1 = [expert.linear_fc1.weight.t() for expert in self.local_experts]  # each [hidden, 2*ffn]
        fc2 = [expert.linear_fc2.weight.t() for expert in self.local_experts]  # each [ffn, hidden]
        gate_up = kernels.grouped_gemm(permuted_local_hidden_states, fc1, counts)  # [tokens, 2*ffn]
        # The experts' activation module (GatedActivation: the kernel table's GLU) on [gate; up].
        hidden = self.local_experts[0].activation_func(gate_up)  # [tokens, ffn]
        # Routing weights scale the activation, as megatron-core's MLP does with per_token_scale.
        hidden = (hidden * permuted_probs.unsqueeze(-1)).to(hidden.dtype)
        return kernels.grouped_gemm(hidden, fc2, counts), None  # [tokens, hidden], no bias
