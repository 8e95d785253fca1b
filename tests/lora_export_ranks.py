"""Rank side of tests/test_lora_export.py: adapters with random (non-zero) factors on a converted
base, saved as a LoRA run saves them, and the logits of the model carrying them."""

from __future__ import annotations

import torch

PREFIXES = (3, 7, 12)  # last-position logits of these prefixes of one token sequence


def prefix_logits(gen, tokens: list[int]) -> torch.Tensor:
    return torch.stack([gen.full_logits(tokens[:n])[0] for n in PREFIXES])


def adapter_logits(rank, world, cases, tokens, r, alpha):
    """Per case (name, base dir, adapter save dir, targets): the logits of the base with random
    adapters, the same after saving and re-loading them through generation's --lora-load path
    (must be equal), and the base's own logits."""
    from sft_training_ranks import _allow_children

    from moetrain.device import get_backend
    from moetrain.finetune.lora.adapter_checkpoint import adapter_meta, inspect_adapter
    from moetrain.finetune.lora.apply import apply_lora
    from moetrain.inference.generator import Generator
    from moetrain.inference.loading import inspect_checkpoint, load_model
    from moetrain.parallel import ParallelDims
    from moetrain.training.checkpointing import TrainState, save_checkpoint
    from moetrain.training.trainer import seed_everything

    _allow_children()
    out = {}
    for name, base_dir, adapter_dir, targets in cases:
        info = inspect_checkpoint(base_dir)
        cfg = info.model_cfg
        dims = ParallelDims(world_size=world)
        dims.initialize()
        seed_everything(1)
        p2p = get_backend().batch_p2p_comm
        model, _ = load_model(info, dims, "fp32", p2p)
        base = prefix_logits(Generator(model, cfg.vocab_size, cfg.seq_length), tokens)
        apply_lora(model, set(targets), r, alpha, 0.0)
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():  # B starts at zero: give every factor a value that moves the logits
            for pname, p in model.named_parameters():
                if "_lora." in pname:
                    p.add_(torch.randn(p.shape, generator=gen) * (0.3 if ".lora_B" in pname else 0.05))
                elif p.requires_grad:  # the router, trained whole
                    p.add_(torch.randn(p.shape, generator=gen) * 0.1)
        adapted = prefix_logits(Generator(model, cfg.vocab_size, cfg.seq_length), tokens)
        meta = {"model_config": cfg.to_dict(), "layout": {}, "args": {}, "has_optimizer": False,
                "lora": adapter_meta(r, alpha, 0.0, targets)}
        save_checkpoint(adapter_dir, TrainState(iteration=5), [model], None, None, meta, save_optim=False,
                        part="adapters")
        reloaded_model, _ = load_model(info, dims, "fp32", p2p, adapter=inspect_adapter(adapter_dir))
        reloaded = prefix_logits(Generator(reloaded_model, cfg.vocab_size, cfg.seq_length), tokens)
        out[name] = {"base": base, "adapted": adapted, "reloaded": reloaded}
    return out
