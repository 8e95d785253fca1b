"""Rank-side code for the SFT parity tests (loaded by moetrain.testing.spawn in each rank)."""

from __future__ import annotations

import torch


def sft_cases(rank, world, cfg, hf_path, cases):
    """Run SFT's forward step and loss on each case with one model holding the HF weights (1 rank).

    ``cases``: {name: (collated micro-batch, reset_position_ids)}. Each case runs
    ``sft_forward_step`` and its loss function, then backward of the *sum* of trained-token losses
    (what megatron-core back-propagates under ``calculate_per_token_loss``). Returns per case
    {"per_token": [b, s] CE, "loss_sum", "num_tokens", "grads": {mcore name: grad}}.
    """
    from model_parity_ranks import build_loaded_model

    from moetrain.models.common.experts import per_expert_items
    from moetrain.models.common.rotary_positions import rotary_positions
    from moetrain.training.sft_step import sft_forward_step

    hf_state = torch.load(hf_path, weights_only=True)
    model, _, _ = build_loaded_model(cfg, 1, 1, 1, hf_state)
    model.train()
    results = {}
    for name, (batch, reset_position_ids) in cases.items():
        model.zero_grad(set_to_none=True)
        rotary_positions(model).positions = None  # no positions left over from an earlier case
        output, loss_func = sft_forward_step(iter([batch]), model, reset_position_ids=reset_position_ids)
        loss_sum, num_tokens, report = loss_func(output)
        loss_sum.backward()
        grads = {}
        for pname, p in model.named_parameters():
            for n, g in per_expert_items(pname, p.grad if p.grad is not None else torch.zeros_like(p)):
                grads[n] = g.detach().clone()
        results[name] = {"per_token": output.detach().float().clone(), "loss_sum": float(loss_sum.detach()),
                         "num_tokens": int(num_tokens), "report": report["lm loss"].detach().clone(),
                         "grads": grads}
    return results
