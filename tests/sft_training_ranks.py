"""Rank side of tests/test_sft_training.py: SFT runs of grok1-tiny in one spawned group per layout.

Every layout starts from the same weights (a 1-rank initial checkpoint loaded with --finetune), so
the losses of the same global batches agree up to the fp32 reduction order.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ITERS = 6
RESUME_ITERS = 10  # 54 training rows / GBS 8: the epoch boundary falls inside step 7
PACKED = ["--reset-attention-mask", "--reset-position-ids"]
VARIABLE = ["--variable-seq-lengths"]
AUX = ["--moe-aux-loss-coeff", "0.01"]  # off by default (the flavor's 0.0); see the aux-loss tests


def args(model: str, data: str, tokenizer: str, log_dir: Path, *extra: str, iters: int = ITERS) -> list[str]:
    return ["--model", model, "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", tokenizer,
            "--data-path", data, "--is-instruction-dataset", "--seq-length", "64", "--micro-batch-size", "1",
            "--global-batch-size", "8", "--train-iters", str(iters), "--lr", "1e-3", "--split", "90,10,0", "--eval-iters", "0", "--no-tensorboard", "--log-dir", str(log_dir), *extra]


def losses(summary) -> list[float]:
    return [summary.losses[i] for i in sorted(summary.losses)]


def metrics(log_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]


# LoRA on attention and every expert (tests/test_lora_training.py; TP2 x PP2 x EP2 runs it here).
LORA = ["--lora-target-modules", "linear_qkv", "linear_proj", "linear_fc1", "linear_fc2", "--lora-r", "4",
        "--lora-alpha", "8"]


def _allow_children() -> None:
    """dist_checkpointing's writer starts helper processes; the harness's ranks count as daemonic."""
    import multiprocessing

    multiprocessing.current_process()._config["daemon"] = False


def _copy_checkpoint(src: Path, iteration: int, dst: Path) -> Path:
    """A checkpoint dir holding only ``iteration`` of ``src`` (as if training had stopped there)."""
    name = f"iter_{iteration:07d}"
    shutil.copytree(src / name, dst / name)
    (dst / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    return dst


def single_rank_group(rank, world, data: dict, tokenizer: str, tmp: str) -> dict:
    """The initial weights, the 1-rank references (unpacked and packed, fixed length), resume with
    evaluation across an epoch boundary, and a llama-tiny checkpoint for the shape-mismatch check."""
    _allow_children()
    from moetrain.pretrain import run_pretrain

    tmp = Path(tmp)
    init = ["--load", str(tmp / "init"), "--finetune"]
    out: dict = {}
    run_pretrain(args("grok1-tiny", data["unpacked"], tokenizer, tmp / "logs_init", "--save", str(tmp / "init"),
                      iters=0))
    ref = run_pretrain(args("grok1-tiny", data["unpacked"], tokenizer, tmp / "logs_ref", *init))
    out["ref"] = losses(ref)
    out["ref_metrics"] = metrics(tmp / "logs_ref")
    out["ref_packed"] = losses(run_pretrain(args("grok1-tiny", data["packed"], tokenizer, tmp / "logs_ref_packed",
                                                 *init, *PACKED)))
    out["ref_packed_metrics"] = metrics(tmp / "logs_ref_packed")
    # The MoE load-balancing loss on: fixed and variable lengths.
    aux = run_pretrain(args("grok1-tiny", data["unpacked"], tokenizer, tmp / "logs_aux", *init, *AUX))
    out["aux_fixed"], out["aux_values"] = losses(aux), [aux.aux_losses[i] for i in sorted(aux.aux_losses)]
    out["aux_variable"] = losses(run_pretrain(args("grok1-tiny", data["unpacked"], tokenizer,
                                                   tmp / "logs_aux_variable", *init, *AUX, *VARIABLE)))
    out["lora"] = losses(run_pretrain(args("grok1-tiny", data["unpacked"], tokenizer, tmp / "logs_lora", *init,
                                           *LORA)))
    out["no_shuffle"] = losses(run_pretrain(args("grok1-tiny", data["unpacked"], tokenizer, tmp / "logs_noshuf",
                                                 *init, "--no-shuffle")))
    # Resume mid-epoch, with shuffling and evaluation: uninterrupted, then from iteration 3 on.
    evals = ["--eval-interval", "3", "--eval-iters", "1"]
    full = run_pretrain(args("grok1-tiny", data["unpacked"], tokenizer, tmp / "logs_full", *init, *evals,
                             "--save", str(tmp / "full"), "--save-interval", "3", iters=RESUME_ITERS))
    ckpt = _copy_checkpoint(tmp / "full", 3, tmp / "resumed")
    resumed = run_pretrain(args("grok1-tiny", data["unpacked"], tokenizer, tmp / "logs_resumed", *evals,
                                "--load", str(ckpt), iters=RESUME_ITERS))
    out["full"], out["full_eval"] = dict(full.losses), dict(full.eval_losses)
    out["resumed"], out["resumed_eval"] = dict(resumed.losses), dict(resumed.eval_losses)
    # A checkpoint of another model shape, for --finetune --load into grok1-tiny.
    run_pretrain(args("llama-tiny", data["unpacked"], tokenizer, tmp / "logs_llama", "--save", str(tmp / "llama"),
                      iters=0))
    return out


def layout_group(rank, world, data: dict, tokenizer: str, tmp: str, name: str, flags: list[str],
                 runs: dict[str, tuple[str, list[str]]]) -> dict:
    """Each of ``runs`` (label: (data kind, extra flags)) under the layout ``flags``, from the
    initial weights: {label: losses}, plus the metrics of each run (written by rank 0)."""
    from moetrain.pretrain import run_pretrain

    tmp = Path(tmp)
    out: dict = {}
    for label, (kind, extra) in runs.items():
        log_dir = tmp / f"logs_{name}_{label}"
        summary = run_pretrain(args("grok1-tiny", data[kind], tokenizer, log_dir, "--load", str(tmp / "init"),
                                    "--finetune", *flags, *extra))
        out[label] = losses(summary)
        if rank == 0:
            out[f"{label}_metrics"] = metrics(log_dir)
    return out
