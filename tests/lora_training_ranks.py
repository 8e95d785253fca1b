"""Rank side of tests/test_lora_training.py: LoRA SFT runs of grok1-tiny through the real trainer."""

from __future__ import annotations

import shutil
from pathlib import Path

from sft_training_ranks import _allow_children, _copy_checkpoint, args, losses

ITERS = 6
LORA = ["--lora-target-modules", "linear_qkv", "linear_proj", "linear_fc1", "linear_fc2", "--lora-r", "4",
        "--lora-alpha", "8"]


def single_rank_lora(rank, world, data: dict, tokenizer: str, tmp: str) -> dict:
    """The base weights (iteration 0), a LoRA run saving adapters at 3 and 6, its resume from 3."""
    _allow_children()
    from moetrain.pretrain import run_pretrain

    tmp = Path(tmp)
    run_pretrain(args("grok1-tiny", data["unpacked"], tokenizer, tmp / "logs_base", "--save", str(tmp / "base"),
                      iters=0))
    base = ["--load", str(tmp / "base")]
    ref = run_pretrain(args("grok1-tiny", data["unpacked"], tokenizer, tmp / "logs_lora", *base, *LORA,
                            "--save", str(tmp / "lora"), "--save-interval", "3", iters=ITERS))
    resumed_dir = _copy_checkpoint(tmp / "lora", 3, tmp / "lora_resumed")
    resumed = run_pretrain(args("grok1-tiny", data["unpacked"], tokenizer, tmp / "logs_lora_resumed", *base, *LORA,
                                "--lora-load", str(resumed_dir), "--save", str(resumed_dir), iters=ITERS))
    return {"ref": losses(ref), "resumed": losses(resumed)}


def layout_lora(rank, world, data: dict, tokenizer: str, tmp: str, layouts: dict[str, list[str]]) -> dict:
    """The LoRA run under each layout of ``layouts`` (all of this group's world size), from the same base."""
    _allow_children()
    from moetrain.pretrain import run_pretrain

    tmp = Path(tmp)
    out = {}
    for name, flags in layouts.items():
        summary = run_pretrain(args("grok1-tiny", data["unpacked"], tokenizer, tmp / f"logs_lora_{name}",
                                    "--load", str(tmp / "base"), *LORA, *flags, "--save", str(tmp / f"lora_{name}"),
                                    iters=ITERS))
        out[name] = losses(summary)
    if rank == 0:
        shutil.rmtree(tmp / "lora_tp2", ignore_errors=True)
    return out
