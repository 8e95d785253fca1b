"""Rank side of tests/test_training_families.py."""

from __future__ import annotations

from pathlib import Path

ITERS = 4


def args(flavor: str, data: str, tokenizer: str, log_dir: Path, *extra: str, iters: int = ITERS) -> list[str]:
    return ["--model", flavor, "--data-path", data, "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", tokenizer, "--seq-length", "32", "--micro-batch-size", "1",
            "--global-batch-size", "4", "--train-iters", str(iters), "--lr", "1e-2", "--min-lr", "1e-3",
            "--lr-warmup-iters", "1", "--moe-aux-loss-coeff", "0.01", "--eval-iters", "0", "--split", "98,2,0",
            "--log-dir", str(log_dir), "--no-tensorboard", *extra]


def train(rank, world, flavor, data, tokenizer, tmp, name, flags, make_init):
    """With ``make_init``: save the initial weights of a 1-rank run first. Then train ITERS steps
    from those weights under ``flags`` and return the losses."""
    from moetrain.pretrain import run_pretrain

    tmp = Path(tmp)
    init = tmp / f"init_{flavor}"
    if make_init:
        run_pretrain(args(flavor, data, tokenizer, tmp / "logs_init", "--save", str(init), iters=0))
    summary = run_pretrain(args(flavor, data, tokenizer, tmp / f"logs_{flavor}_{name}", "--load", str(init),
                                "--finetune", *flags))
    return [summary.losses[i] for i in sorted(summary.losses)]
