"""Rank-side code for the HF parity tests (loaded by moetrain.testing.spawn in each rank)."""

from __future__ import annotations

import torch


def build_loaded_model(cfg, tp, pp, ep, hf_state, num_layer_list=None):
    """Build this rank's moetrain model under the layout and load the HF weights through the map."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from moetrain.device import get_backend
    from moetrain.models.builder import build_model
    from moetrain.models.weight_maps import RankCoord, ShardLayout, hf_to_mcore
    from moetrain.parallel import ParallelDims
    from moetrain.training.transformer_config import RuntimeOptions, build_transformer_config

    world = torch.distributed.get_world_size()
    dims = ParallelDims(world_size=world, tp=tp, pp=pp, ep=ep, num_layer_list=num_layer_list,
                        sequence_parallel=tp > 1)
    dims.validate_model(cfg)
    dims.initialize()
    model_parallel_cuda_manual_seed(7)
    config = build_transformer_config(cfg, dims, RuntimeOptions(dtype="fp32", batch_p2p_comm=get_backend().batch_p2p_comm))
    model = build_model(cfg, config, cfg.vocab_size)
    coord = RankCoord(ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
                      ps.get_expert_model_parallel_rank())
    layout = ShardLayout(tp=tp, pp=pp, ep=ep, num_layer_list=num_layer_list)
    local = hf_to_mcore(cfg, hf_state, layout, coord)
    missing, unexpected = model.load_state_dict(local, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise AssertionError(f"state dict mismatch on {coord}: missing {missing}, unexpected {unexpected}")
    return model, coord, config


def _gather_vocab(logits: torch.Tensor) -> torch.Tensor:
    """[b, s, vocab/tp] on each TP rank -> [b, s, vocab]."""
    from megatron.core import parallel_state as ps

    group = ps.get_tensor_model_parallel_group()
    parts = [torch.empty_like(logits) for _ in range(torch.distributed.get_world_size(group))]
    torch.distributed.all_gather(parts, logits.contiguous(), group=group)
    return torch.cat(parts, dim=-1)


def logits_loss_grads(rank, world, cfg, tp, pp, ep, hf_path, tokens, labels, grad_names, num_layer_list=None):
    """One forward-only pass for logits, one forward-backward for the loss and grads.

    Returns (coord, logits or None, loss or None, {local mcore name: grad}) for the parent to compare.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from moetrain.models.common.experts import per_expert_items

    hf_state = torch.load(hf_path, weights_only=True)
    model, coord, config = build_loaded_model(cfg, tp, pp, ep, hf_state, num_layer_list)
    b, s = tokens.shape
    position_ids = torch.arange(s).unsqueeze(0).expand(b, -1)
    schedule = get_forward_backward_func()

    def logits_step(data_iterator, model_chunk):
        del data_iterator
        output = model_chunk(tokens, position_ids, None)

        def collect(out):
            return torch.zeros(()), {"logits": _gather_vocab(out).detach()}

        return output, collect

    model.eval()
    with torch.no_grad():
        out = schedule(forward_step_func=logits_step, data_iterator=iter([None]), model=[model], num_microbatches=1,
                       seq_length=s, micro_batch_size=b, forward_only=True)
    logits = out[0]["logits"] if out else None

    def loss_step(data_iterator, model_chunk):
        del data_iterator
        output = model_chunk(tokens, position_ids, None, labels=labels)

        def mean_loss(per_token):
            loss = per_token.float().mean()
            return loss, {"loss": loss.detach()}

        return output, mean_loss

    model.train()
    model.zero_grad()
    out = schedule(forward_step_func=loss_step, data_iterator=iter([None]), model=[model], num_microbatches=1,
                   seq_length=s, micro_batch_size=b, forward_only=False)
    loss = float(out[0]["loss"]) if out else None
    # Expert params (megatron marks them allreduce=False) are replicated over TP ranks under
    # expert-TP 1 and see different tokens on each; the parent sums them like megatron's DDP would.
    grads = {n: (g.detach().clone(), not getattr(p, "allreduce", True)) for name, p in model.named_parameters()
             if p.grad is not None for n, g in per_expert_items(name, p.grad) if any(n.endswith(x) for x in grad_names)}
    return coord, logits, loss, grads


def grok1_ablations(rank, world, cfg, hf_path, tokens):
    """Logits of the full Grok-1 model and of variants with one component removed (1 rank)."""
    import dataclasses

    hf_state = torch.load(hf_path, weights_only=True)
    position_ids = torch.arange(tokens.shape[1]).unsqueeze(0).expand(tokens.shape[0], -1)

    def logits_of(model):
        model.eval()
        with torch.no_grad():
            return model(tokens, position_ids, None).detach()

    results = {}
    model, _, _ = build_loaded_model(cfg, 1, 1, 1, hf_state)
    results["full"] = logits_of(model)
    for name, change in (("softcap", {"attn_logit_softcapping": None}),
                         ("embedding_multiplier", {"embedding_multiplier": 1.0}),
                         ("output_multiplier", {"output_multiplier": 1.0})):
        variant, _, _ = build_loaded_model(dataclasses.replace(cfg, **change), 1, 1, 1, hf_state)
        results[name] = logits_of(variant)
    for which in ("self_attn_bda", "mlp_bda"):
        model, _, _ = build_loaded_model(cfg, 1, 1, 1, hf_state)
        for layer in model.decoder.layers:
            getattr(layer, which).norm = torch.nn.Identity()
        results[f"post_norm:{which}"] = logits_of(model)
    return results


def moe_option_effects(rank, world, cfg, hf_path, tokens, labels):
    """Logits and router gradient of layer 0 under MoE training options (1 rank, same HF weights)."""
    import dataclasses

    hf_state = torch.load(hf_path, weights_only=True)
    position_ids = torch.arange(tokens.shape[1]).unsqueeze(0).expand(tokens.shape[0], -1)
    results = {}
    for name, change in (("plain", {}), ("aux_loss", {"moe_aux_loss_coeff": 1e-1}),
                         ("z_loss", {"moe_z_loss_coeff": 1e-1}), ("capacity", {"moe_expert_capacity_factor": 0.5})):
        model, _, _ = build_loaded_model(dataclasses.replace(cfg, **change), 1, 1, 1, hf_state)
        model.train()
        loss = model(tokens, position_ids, None, labels=labels).float().mean()
        loss.backward()
        router = model.decoder.layers[0].mlp.router.weight.grad.detach().clone()
        model.eval()
        with torch.no_grad():
            logits = model(tokens, position_ids, None).detach()
        results[name] = {"logits": logits, "router_grad": router}
    return results
