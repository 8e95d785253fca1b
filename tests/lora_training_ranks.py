"""Rank side of tests/test_lora_training.py: LoRA SFT runs of grok1-tiny through the real trainer."""

from __future__ import annotations

from pathlib import Path

import torch
from lora_export_ranks import prefix_logits
from sft_training_ranks import LORA, _allow_children, _copy_checkpoint, args, losses

ITERS = 6
LOGIT_TOKENS = [5, 17, 3, 99, 42, 8, 61, 23, 70, 11, 2, 36]  # < grok1-tiny's vocabulary


def adapter_logits(base: Path, adapter: Path, tp: int = 1, ep: int = 1) -> torch.Tensor:
    """Last-position logits of prefixes of LOGIT_TOKENS: the base with the adapter, loaded (and
    re-sharded) at TP ``tp`` x EP ``ep`` by generation's --lora-load path."""
    from moetrain.device import get_backend
    from moetrain.finetune.lora.adapter_checkpoint import inspect_adapter
    from moetrain.inference.generator import Generator
    from moetrain.inference.loading import inspect_checkpoint, load_model
    from moetrain.parallel import ParallelDims

    info = inspect_checkpoint(base)
    dims = ParallelDims(world_size=torch.distributed.get_world_size(), tp=tp, ep=ep)
    dims.initialize()
    model, _ = load_model(info, dims, "fp32", get_backend().batch_p2p_comm, adapter=inspect_adapter(adapter))
    return prefix_logits(Generator(model, info.model_cfg.vocab_size, info.model_cfg.seq_length), LOGIT_TOKENS)


def layout_lora(rank, world, data: dict, tokenizer: str, tmp: str, layouts: dict[str, list[str]]) -> dict:
    """The base weights (iteration 0, saved here), then the LoRA run under each layout of
    ``layouts`` (all of this group's world size) from that base; the TP2 and EP2 adapters' logits
    at the layout they were trained at."""
    _allow_children()
    from moetrain.pretrain import run_pretrain

    tmp = Path(tmp)
    run_pretrain(args("grok1-tiny", data["unpacked"], tokenizer, tmp / "logs_base", "--save", str(tmp / "base"),
                      iters=0))
    out: dict = {"losses": {}, "logits": {}}
    for name, flags in layouts.items():
        summary = run_pretrain(args("grok1-tiny", data["unpacked"], tokenizer, tmp / f"logs_lora_{name}",
                                    "--load", str(tmp / "base"), *LORA, *flags, "--save", str(tmp / f"lora_{name}"),
                                    iters=ITERS))
        out["losses"][name] = losses(summary)
    out["logits"]["tp2"] = adapter_logits(tmp / "base", tmp / "lora_tp2", tp=2)
    out["logits"]["ep2"] = adapter_logits(tmp / "base", tmp / "lora_ep2", ep=2)
    return out


def single_rank_lora(rank, world, data: dict, tokenizer: str, tmp: str) -> dict:
    """A LoRA run saving adapters at 3 and 6 and its resume from 3, from the layout group's base;
    the TP2- and EP2-trained adapters' logits loaded on one rank."""
    _allow_children()
    from moetrain.pretrain import run_pretrain

    tmp = Path(tmp)
    base = ["--load", str(tmp / "base")]
    ref = run_pretrain(args("grok1-tiny", data["unpacked"], tokenizer, tmp / "logs_lora", *base, *LORA,
                            "--save", str(tmp / "lora"), "--save-interval", "3", iters=ITERS))
    resumed_dir = _copy_checkpoint(tmp / "lora", 3, tmp / "lora_resumed")
    resumed = run_pretrain(args("grok1-tiny", data["unpacked"], tokenizer, tmp / "logs_lora_resumed", *base, *LORA,
                                "--lora-load", str(resumed_dir), "--save", str(resumed_dir), iters=ITERS))
    logits = {name: adapter_logits(tmp / "base", tmp / f"lora_{name}") for name in ("tp2", "ep2")}
    recompute = run_pretrain(args("grok1-tiny", data["unpacked"], tokenizer, tmp / "logs_lora_recompute", *base, *LORA,
                                  "--recompute-granularity", "full", "--recompute-method", "uniform",
                                  "--recompute-num-layers", "1", iters=ITERS))
    return {"ref": losses(ref), "resumed": losses(resumed), "logits": logits, "recompute": losses(recompute)}
