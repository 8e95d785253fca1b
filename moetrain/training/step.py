"""One training / evaluation step through megatron-core's pipeline schedules.

The loss follows Megatron-LM: each micro-batch returns (sum of token losses, token count, report);
the schedule divides by the token count and the number of micro-batches; the reported loss is
sum / count over the whole global batch, averaged over data-parallel replicas.

A NaN/inf loss skips the optimizer update (all ranks agree through one all-reduce, so every rank
skips together) and is counted by the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist


@dataclass
class StepResult:
    lm_loss: float  # NaN when the loss was not finite
    aux_loss: float | None
    grad_norm: float | None
    skipped: bool  # no optimizer update (NaN/inf loss or fp16 overflow)
    nan: bool


def _loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    losses = output_tensor.float().reshape(-1)  # [b*s] per-token cross entropy
    mask = loss_mask.reshape(-1).float()
    loss = torch.sum(losses * mask)
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([loss.detach(), mask.sum()])
    return loss, num_tokens, {"lm loss": report}


def forward_step(data_iterator, model):
    """megatron-core's forward_step_func: (output, loss function of the output)."""
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], attention_mask=None, labels=batch["labels"])
    return output, partial(_loss_func, batch["loss_mask"])


def _reduce_lm_loss(losses_reduced: list[dict], is_last_stage: bool) -> torch.Tensor:
    """[loss sum, tokens] of this step on last-stage ranks (zeros elsewhere), summed over DP."""
    from megatron.core import parallel_state

    total = torch.zeros(2, dtype=torch.float64)
    if is_last_stage:
        for item in losses_reduced:
            total += item["lm loss"].double()
        dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
    return total


def _broadcast_from_last_stage(value: torch.Tensor) -> torch.Tensor:
    """Every pipeline rank gets the last stage's value (one small all-reduce over the PP group)."""
    from megatron.core import parallel_state

    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        dist.all_reduce(value, group=parallel_state.get_pipeline_model_parallel_group())
    return value


def _aux_loss(num_microbatches: int, num_layers: int) -> float | None:
    """Average MoE auxiliary loss per layer from megatron-core's tracker (cleared after reading)."""
    from megatron.core.transformer.moe.moe_utils import get_moe_layer_wise_logging_tracker, track_moe_metrics

    if not get_moe_layer_wise_logging_tracker():
        return None
    totals: dict = {}
    track_moe_metrics(loss_scale=1.0 / num_microbatches, iteration=0, total_loss_dict=totals, num_layers=num_layers)
    if not totals:
        return None
    return float(sum(v.item() for v in totals.values()))


def run_schedule(model, data_iterator, num_microbatches: int, seq_length: int, micro_batch_size: int,
                 forward_only: bool, forward_step_func: Callable | None = None) -> torch.Tensor:
    """Loss [sum, tokens] of one global batch on every rank. ``forward_step_func`` defaults to
    pretraining's :func:`forward_step`; another workflow's (SFT) must keep its loss contract."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    losses = get_forward_backward_func()(
        forward_step_func=forward_step_func or forward_step, data_iterator=data_iterator, model=model,
        num_microbatches=num_microbatches, seq_length=seq_length, micro_batch_size=micro_batch_size,
        decoder_seq_length=seq_length, forward_only=forward_only)
    total = _reduce_lm_loss(losses, parallel_state.is_pipeline_last_stage(ignore_virtual=True))
    return _broadcast_from_last_stage(total)


def train_step(model, optimizer, data_iterator, num_microbatches: int, seq_length: int, micro_batch_size: int,
               num_layers: int, forward_step_func: Callable | None = None) -> StepResult:
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    total = run_schedule(model, data_iterator, num_microbatches, seq_length, micro_batch_size, forward_only=False,
                         forward_step_func=forward_step_func)
    aux = _aux_loss(num_microbatches, num_layers)
    lm_loss = (total[0] / total[1].clamp(min=1)).item()
    # Agree on finiteness across every rank (pipeline ranks already share the value; this covers
    # the case of non-finite values on some ranks only, e.g. a NaN gradient-free stage).
    bad = torch.tensor([0.0 if torch.isfinite(torch.tensor(lm_loss)) else 1.0])
    dist.all_reduce(bad)
    if bad.item() > 0:
        optimizer.zero_grad()
        return StepResult(lm_loss=float("nan"), aux_loss=aux, grad_norm=None, skipped=True, nan=True)
    update_successful, grad_norm, _ = optimizer.step()
    return StepResult(lm_loss=lm_loss, aux_loss=aux, grad_norm=None if grad_norm is None else float(grad_norm),
                      skipped=not update_successful, nan=False)


@torch.no_grad()
def eval_step(model, data_iterator, num_microbatches: int, seq_length: int, micro_batch_size: int,
              num_layers: int, forward_step_func: Callable | None = None) -> float:
    for chunk in model:
        chunk.eval()
    try:
        total = run_schedule(model, data_iterator, num_microbatches, seq_length, micro_batch_size, forward_only=True,
                             forward_step_func=forward_step_func)
        _aux_loss(num_microbatches, num_layers)  # eval aux losses are not part of training logs
    finally:
        for chunk in model:
            chunk.train()
    return (total[0] / total[1].clamp(min=1)).item()
