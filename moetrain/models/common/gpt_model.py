"""megatron-core's GPTModel with one change: without tensor parallelism the language-model loss is
torch's fused cross-entropy instead of megatron-core's vocab-parallel one.

The vocab-parallel version exists to all-reduce the softmax statistics over TP ranks; with one
rank it still makes about eight separate passes (max, subtract, exp, sum, divide, and their
backward) over the [s, b, vocab] fp32 logits, the largest activation of the model. ``F.cross_entropy``
computes the same fp32 log-softmax over the same (padded) vocabulary in one fused kernel per
direction (measured on CPU in docs/benchmarks.md). With TP > 1, or megatron-core's own fused loss
chosen in the config, upstream's code runs unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel


class MoetrainGPTModel(GPTModel):
    def compute_language_model_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """labels [b, s]; logits [s, b, vocab (padded)] -> per-token loss [b, s] (fp32)."""
        if self.pg_collection.tp.size() > 1 or self.config.cross_entropy_loss_fusion:
            return super().compute_language_model_loss(labels, logits)
        s, b, vocab = logits.shape
        # Labels are always valid token ids here (the loss mask, not an ignore index, drops positions).
        loss = F.cross_entropy(logits.float().reshape(s * b, vocab), labels.t().reshape(s * b),
                               reduction="none", ignore_index=-(2**31))
        return loss.view(s, b).t().contiguous()
