"""Rotary angles at given positions instead of 0..s-1.

megatron-core's GPTModel computes RoPE angles for positions ``0 .. s-1`` and ignores
``position_ids`` (they only feed learned absolute embeddings). Two workflows need other positions:
packed fine-tuning samples whose positions restart at every sample (``--reset-position-ids``), and
generation, where a decode step's token sits at position ``len(prefix)``. A forward hook on the
chunk's ``rotary_pos_emb`` module gathers the angles of the wanted positions:
``[s, 1, 1, d]`` (positions 0..s-1) -> ``[s, b, 1, d]`` (``freqs[position_ids[b, t]]``), which the
rotary kernels broadcast over heads exactly as before.
"""

from __future__ import annotations

import torch


class RotaryPositions:
    """Holds the positions of the next forward of one model chunk (None: 0..s-1)."""

    def __init__(self, model) -> None:
        self.positions: torch.Tensor | None = None  # [b, s] long
        self.max_position = int(model.max_sequence_length)
        self._table: torch.Tensor | None = None  # [positions, 1, 1, d], kept once computed
        self._rotary = model.rotary_pos_emb
        self._rotary.register_forward_hook(self._gather)

    def _gather(self, module, args, freqs):
        if self.positions is None:
            return freqs
        need = int(self.positions.max()) + 1
        if freqs.shape[0] < need:  # angles for the furthest position, not only for 0..s-1
            # A decode step (s = 1) at position p needs rows 0..p: computed once, up to the model's
            # positions, and kept (the angles depend on the position only).
            if self._table is None or self._table.shape[0] < need:
                self._table = module.forward(max(need, self.max_position))  # bypasses this hook
            freqs = self._table
        table = freqs[:, 0, 0, :]  # [positions, d]
        return table[self.positions.t().to(table.device)].unsqueeze(2)  # [s, b, 1, d]


def rotary_positions(model) -> RotaryPositions:
    """The chunk's hook, installed on first use (unwraps DDP / Float16Module)."""
    from megatron.core.utils import unwrap_model

    inner = unwrap_model(model)
    hook = getattr(inner, "_moetrain_rotary_positions", None)
    if hook is None:
        hook = RotaryPositions(inner)
        inner._moetrain_rotary_positions = hook
    return hook
