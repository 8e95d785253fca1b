"""Rank side of tests/test_checkpoint_faults.py: damaged checkpoints resumed through the trainer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ITERS, SAVE_EVERY = 6, 2
MARKER = "payload_ran"


def _args(tmp: Path, name: str, *extra: str) -> list[str]:
    return ["--model", "grok1-tiny", "--mock-data", "--seq-length", "32", "--micro-batch-size", "1",
            "--global-batch-size", "4", "--train-iters", str(ITERS), "--lr", "1e-2", "--min-lr", "1e-3",
            "--lr-warmup-iters", "1", "--eval-interval", "100", "--eval-iters", "0",
            "--log-dir", str(tmp / f"logs_{name}"), "--no-tensorboard", *extra]


def _two_checkpoints(tmp: Path, name: str) -> Path:
    """Iterations 2 and 4 of the reference run, the pointer on 4 (as if training had stopped there)."""
    from moetrain.checkpoint_formats.directory import iter_dir_name, write_latest

    dst = tmp / name
    for it in (2, 4):
        shutil.copytree(tmp / "ref" / iter_dir_name(it), dst / iter_dir_name(it))
    write_latest(dst, 4)
    return dst


class Payload:
    """Unpickling this would create the marker file: it must never run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def fault_group(rank, world, tmp: str, damages: dict[str, tuple[str, str]]) -> dict:
    """The reference run (checkpoints at 2, 4, 6), then per damage {name: (file of iteration 4, how)}
    a resume of the pointer-at-4 copy; a resume with --no-checkpoint-fallback; a planted pickle."""
    import torch
    from sft_training_ranks import _allow_children

    from moetrain.config import ConfigError
    from moetrain.pretrain import run_pretrain
    from moetrain.training.checkpoint_integrity import crc32_of

    _allow_children()
    tmp = Path(tmp)
    out: dict = {}
    ref = run_pretrain(_args(tmp, "ref", "--save", str(tmp / "ref"), "--save-interval", str(SAVE_EVERY)))
    out["ref"] = dict(ref.losses)
    out["files"] = sorted(json.loads((tmp / "ref" / "iter_0000004" / "moetrain.json").read_text())["files"])
    for name, (file, how) in [*damages.items(), ("refused", next(iter(damages.values())))]:
        ckpt = _two_checkpoints(tmp, name)
        target = ckpt / "iter_0000004" / file
        if how == "truncate":
            target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
        elif how == "delete":
            target.unlink()
        else:  # flip one bit in the middle
            data = bytearray(target.read_bytes())
            data[len(data) // 2] ^= 0x01
            target.write_bytes(bytes(data))
        if name == "refused":  # the first damage again, with --no-checkpoint-fallback
            try:
                run_pretrain(_args(tmp, name, "--load", str(ckpt), "--no-checkpoint-fallback"))
                out["refused"] = None
            except ConfigError as e:
                out["refused"] = str(e)
            continue
        summary = run_pretrain(_args(tmp, name, "--load", str(ckpt), "--save", str(ckpt)))
        out[name] = dict(summary.losses)
    # A full disk at the save of iteration 4: stop (the default), or go on with --save-failure continue.
    import errno

    from megatron.core import dist_checkpointing

    from moetrain.checkpoint_formats.directory import read_latest
    from moetrain.training.trainer import TrainingError

    real_save = dist_checkpointing.save

    def save_fails_at_4(sd, path, **kw):
        if "iter_0000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(sd, path, **kw)

    dist_checkpointing.save = save_fails_at_4
    try:
        for mode in ("stop", "continue"):
            root = tmp / f"full_{mode}"
            try:
                summary = run_pretrain(_args(tmp, f"full_{mode}", "--save", str(root), "--save-interval", "2",
                                             "--save-failure", mode))
                out[f"full_{mode}"] = {"losses": dict(summary.losses)}
            except TrainingError as e:
                out[f"full_{mode}"] = {"error": str(e)}
            out[f"full_{mode}"]["dirs"] = sorted(p.name for p in root.iterdir() if p.is_dir())
            out[f"full_{mode}"]["pointer"] = read_latest(root)
    finally:
        dist_checkpointing.save = real_save
    # A planted pickle: an RNG file whose unpickling would run code, recorded as if it were genuine.
    ckpt = _two_checkpoints(tmp, "planted")
    rng = ckpt / "iter_0000004" / "rng" / "rank_00000.pt"
    torch.save({"random": Payload(str(tmp / MARKER))}, rng)
    meta_path = ckpt / "iter_0000004" / "moetrain.json"
    meta = json.loads(meta_path.read_text())
    meta["files"]["rng/rank_00000.pt"] = {"size": rng.stat().st_size, "crc32": crc32_of(rng)}
    meta_path.write_text(json.dumps(meta))
    try:
        run_pretrain(_args(tmp, "planted", "--load", str(ckpt)))
        out["planted"] = None
    except ConfigError as e:
        out["planted"] = str(e)
    out["payload_ran"] = (tmp / MARKER).exists()
    return out
