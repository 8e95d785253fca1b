"""Rank side of tests/test_killed_runs.py: a 2-rank (PP2) grok1-tiny run that SIGKILLs itself at a
chosen point of training, and the same command relaunched.

A kill point is a dict: ``iteration``, ``rank`` (0, 1 or "all"), ``phase`` and, for "forward" /
"backward", the ``micro_batch`` and the rank's local ``layer``. The phases:
- "forward": entering that layer's forward;
- "backward": in that layer's backward (a hook on its output's gradient);
- "save": after megatron-core wrote the checkpoint's shards, before it is made visible.
The process is killed with SIGKILL (nothing of Python's clean-up runs), after writing one line to
``<tmp>/killed_<launch>`` so the test knows the kill happened where it was meant to.
"""

from __future__ import annotations

import os
from pathlib import Path

ITERS, SAVE_EVERY, MICRO_BATCHES, LOCAL_LAYERS = 6, 2, 4, 2  # grok1-tiny's 4 layers over PP2


def launch_args(tmp: Path, ckpt: str, log: str) -> list[str]:
    """The one command every launch runs (the user's relaunch is the same command)."""
    return ["--model", "grok1-tiny", "--mock-data", "--seq-length", "32", "--micro-batch-size", "1",
            "--global-batch-size", str(MICRO_BATCHES), "--pipeline-model-parallel-size", "2",
            "--train-iters", str(ITERS), "--lr", "1e-2", "--min-lr", "1e-3", "--lr-warmup-iters", "1",
            "--eval-interval", "100", "--eval-iters", "0", "--load", str(tmp / ckpt), "--save", str(tmp / ckpt),
            "--save-interval", str(SAVE_EVERY), "--log-dir", str(tmp / log), "--no-tensorboard"]


def describe(point: dict) -> str:
    who = "every rank" if point["rank"] == "all" else f"rank {point['rank']}"
    where = {"forward": "in the forward of local layer {layer} of micro-batch {micro_batch}",
             "backward": "in the backward of local layer {layer} of micro-batch {micro_batch}",
             "save": "while saving its checkpoint"}[point["phase"]]
    return f"SIGKILL of {who} at iteration {point['iteration']}, {where.format(**point)}"


def _die(marker: Path, point: dict) -> None:
    from moetrain.testing.spawn import kill_process_tree

    marker.write_text(describe(point) + "\n")
    # As a scheduler's kill: the rank's whole process tree, its checkpoint-writer helpers included.
    kill_process_tree(os.getpid())


def _install_kill(point: dict, start_iteration: int, marker: Path) -> None:
    """Hooks that count this rank's progress from ``start_iteration`` and kill at ``point``."""
    import torch
    from megatron.core import dist_checkpointing
    from megatron.core.transformer.transformer_layer import TransformerLayer

    from moetrain.checkpoint_formats.directory import iter_dir_name

    phase = point["phase"]
    if phase in ("forward", "backward"):
        # Forward calls of this rank's layers, in order: layer, then micro-batch, then iteration.
        per_iteration = MICRO_BATCHES * LOCAL_LAYERS
        target = ((point["iteration"] - start_iteration - 1) * per_iteration
                  + (point["micro_batch"] - 1) * LOCAL_LAYERS + point["layer"])
        calls = {"n": 0}

        def pre_hook(module, args):
            if isinstance(module, TransformerLayer):
                calls["n"] += 1
                if calls["n"] == target and phase == "forward":
                    _die(marker, point)

        def post_hook(module, args, output):
            if isinstance(module, TransformerLayer) and calls["n"] == target and phase == "backward":
                hidden = output[0] if isinstance(output, tuple) else output
                hidden.register_hook(lambda grad: _die(marker, point))

        torch.nn.modules.module.register_module_forward_pre_hook(pre_hook)
        torch.nn.modules.module.register_module_forward_hook(post_hook)
    else:
        real_save = dist_checkpointing.save

        def save_then_die(sd, path, **kw):
            result = real_save(sd, path, **kw)
            if iter_dir_name(point["iteration"]) in str(path):
                _die(marker, point)
            return result

        dist_checkpointing.save = save_then_die


def launch(rank, world, tmp: str, ckpt: str, log: str, point: dict | None, start_iteration: int) -> None:
    """One launch of the command; with ``point``, the ranks it names die there (the others are
    killed by the harness once it sees a rank gone, as torchrun does)."""
    from sft_training_ranks import _allow_children

    from moetrain.pretrain import run_pretrain

    _allow_children()
    tmp = Path(tmp)
    if point is not None and point["rank"] in (rank, "all"):
        _install_kill(point, start_iteration, tmp / f"killed_{log}")
    run_pretrain(launch_args(tmp, ckpt, log))  # the test reads each launch's losses from its log
