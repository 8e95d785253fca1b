"""SFT's forward step: the same token-sum loss contract as pretraining, with isolation and positions.

The batch (``moetrain.training.sft_data.Collate``) carries next-token ``labels`` with ``loss_mask``
0 on prompt, padding and cross-sample positions; ``attention_mask`` (block-diagonal causal, True =
masked) when packed samples must not see each other; ``position_ids`` restarting per sample with
``--reset-position-ids``. The loss is the sum over trained tokens: with
``calculate_per_token_loss`` megatron-core divides the gradients by the trained tokens of the
whole global batch (all micro-batches, all DP ranks), so every trained token weighs the same and
an empty-target sample contributes nothing (no division by its zero count).
"""

from __future__ import annotations

from functools import partial

from moetrain.models.common.rotary_positions import rotary_positions
from moetrain.training import step as step_mod


def sft_forward_step(data_iterator, model, reset_position_ids: bool = False):
    batch = next(data_iterator)
    # Set on every step (None: 0..s-1), so no earlier step's positions linger on the model.
    rotary_positions(model).positions = batch["position_ids"] if reset_position_ids else None
    output = model(batch["tokens"], batch["position_ids"], attention_mask=batch.get("attention_mask"),
                   labels=batch["labels"])
    return output, partial(step_mod._loss_func, batch["loss_mask"])
