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

from megatron.core.utils import unwrap_model

from moetrain.models.common.rotary_positions import rotary_positions
from moetrain.training import step as step_mod


def _padding_mask(gpt, padding_mask):
    """megatron-core splits the padding mask over sequence-parallel ranks on the first pipeline stage
    only; a later stage's decoder sees its shard of the sequence, so it gets its shard of the mask."""
    if gpt.pre_process or not gpt.config.sequence_parallel:
        return padding_mask
    from megatron.core import tensor_parallel

    return tensor_parallel.scatter_to_sequence_parallel_region(
        padding_mask.transpose(0, 1).contiguous()).transpose(0, 1).contiguous()


def sft_forward_step(data_iterator, model, reset_position_ids: bool = False):
    batch = next(data_iterator)
    # Set on every step (None: 0..s-1), so no earlier step's positions linger on the model.
    rotary_positions(model).positions = batch["position_ids"] if reset_position_ids else None
    gpt = unwrap_model(model)
    extra = {}
    if gpt.config.num_moe_experts:
        # Padding takes no part in routing statistics (the load-balancing and z losses).
        extra["padding_mask"] = _padding_mask(gpt, batch["padding_mask"])
    output = model(batch["tokens"], batch["position_ids"], attention_mask=batch.get("attention_mask"),
                   labels=batch["labels"], **extra)
    return output, partial(step_mod._loss_func, batch["loss_mask"])
