"""Rank-side code for the LoRA tests (loaded by moetrain.testing.spawn in each rank)."""

from __future__ import annotations

import torch

# PEFT module name (under model.layers.N.) of each moetrain adapter piece, per family.
PIECES = {
    "llama": {("linear_qkv", "q"): "self_attn.q_proj", ("linear_qkv", "k"): "self_attn.k_proj",
              ("linear_qkv", "v"): "self_attn.v_proj", ("linear_proj", None): "self_attn.o_proj",
              ("linear_fc1", "gate"): "mlp.gate_proj", ("linear_fc1", "up"): "mlp.up_proj",
              ("linear_fc2", None): "mlp.down_proj"},
    "grok1": {("linear_qkv", "q"): "attn.q_proj", ("linear_qkv", "k"): "attn.k_proj",
              ("linear_qkv", "v"): "attn.v_proj", ("linear_proj", None): "attn.o_proj",
              ("experts", "gate"): "moe_block.experts.{e}.linear", ("experts", "up"): "moe_block.experts.{e}.linear_v",
              ("experts", "down"): "moe_block.experts.{e}.linear_1"},
}


def _adapters(model, family: str, expert_offset: int):
    """(PEFT module name, A, B, kind) of every adapter factor pair of this rank; experts are split
    into one pair per expert (views of the stacked factors)."""
    out = []
    for i, layer in enumerate(model.decoder.layers):
        stem = f"base_model.model.model.layers.{i}."
        for parent, target, kind in ((layer.self_attention, "linear_qkv", "column"),
                                     (layer.self_attention, "linear_proj", "row"),
                                     (layer.mlp, "linear_fc1", "column"), (layer.mlp, "linear_fc2", "row")):
            adapter = getattr(parent, f"{target}_lora", None)
            if adapter is None:
                continue
            if kind == "column":
                for piece in adapter.lora_A:
                    out.append((stem + PIECES[family][(target, piece)], adapter.lora_A[piece],
                                adapter.lora_B[piece], kind))
            else:
                out.append((stem + PIECES[family][(target, None)], adapter.lora_A, adapter.lora_B, kind))
        experts = getattr(layer.mlp, "experts_lora", None)
        if experts is not None:
            for piece in experts.lora_A:
                for j in range(experts.lora_A[piece].shape[0]):
                    name = stem + PIECES[family][("experts", piece)].format(e=expert_offset + j)
                    out.append((name, experts.lora_A[piece][j], experts.lora_B[piece][j], "expert"))
    return out


def _shard(t: torch.Tensor, kind: str, is_a: bool, tp_rank: int, tp: int) -> torch.Tensor:
    """The TP slice of a full PEFT factor: column-parallel B by rows, row-parallel A by columns."""
    if kind == "column" and not is_a:
        return t.chunk(tp, dim=0)[tp_rank]
    if kind == "row" and is_a:
        return t.chunk(tp, dim=1)[tp_rank]
    return t


def _gather(t: torch.Tensor, kind: str, is_a: bool, group) -> torch.Tensor:
    dim = 0 if kind == "column" and not is_a else 1 if kind == "row" and is_a else None
    if dim is None or group.size() == 1:
        return t.detach().clone()
    parts = [torch.empty_like(t) for _ in range(group.size())]
    torch.distributed.all_gather(parts, t.detach().contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def lora_sft_steps(rank, world, cfg, tp, hf_path, init, batches, r, alpha, lr, targets):
    """LoRA on every dense target of the HF-loaded model; SGD steps on ``batches`` (collated SFT
    micro-batches, one per step). Returns the losses, the trained factors under PEFT names (full,
    gathered over TP), and whether every base weight is bit-unchanged."""
    from megatron.core import parallel_state as ps
    from model_parity_ranks import build_loaded_model

    from moetrain.finetune.lora.apply import apply_lora
    from moetrain.training.sft_step import sft_forward_step

    hf_state = torch.load(hf_path, weights_only=True)
    model, coord, _ = build_loaded_model(cfg, tp, 1, 1, hf_state)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = apply_lora(model, set(targets), r, alpha, 0.0)
    tp_group = ps.get_tensor_model_parallel_group()
    family = "grok1" if cfg.hf_architecture == "Grok1ModelForCausalLM" else "llama"
    adapters = _adapters(model, family, 0)
    with torch.no_grad():
        for name, a, b, kind in adapters:
            a.copy_(_shard(init[f"{name}.lora_A.weight"], kind, True, coord.tp_rank, tp))
            b.copy_(_shard(init[f"{name}.lora_B.weight"], kind, False, coord.tp_rank, tp))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    model.train()
    losses = []
    for batch in batches:
        opt.zero_grad(set_to_none=True)
        output, loss_func = sft_forward_step(iter([batch]), model)
        loss_sum, num_tokens, _ = loss_func(output)
        (loss_sum / num_tokens).backward()
        # finalize_model_grads' job under sequence parallelism: replicated factors saw part of the sequence.
        for p in params:
            if getattr(p, "sequence_parallel", False) and tp > 1:
                torch.distributed.all_reduce(p.grad, group=tp_group)
        opt.step()
        losses.append(float(loss_sum.detach() / num_tokens))
    trained = {}
    for name, a, b, kind in adapters:
        trained[f"{name}.lora_A.weight"] = _gather(a, kind, True, tp_group)
        trained[f"{name}.lora_B.weight"] = _gather(b, kind, False, tp_group)
    unchanged = all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)
    return {"losses": losses, "trained": trained, "base_unchanged": unchanged, "trainable": trainable,
            "frozen_with_grad": [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]}
