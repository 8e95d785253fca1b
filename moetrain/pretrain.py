"""``torchrun ... -m moetrain.pretrain`` / ``moetrain-pretrain``: Megatron-style pretraining.

Order matters for users: parse and validate everything that can be checked cheaply (flags, layout,
batch sizes, data files, checkpoint compatibility) *before* the device layer, process groups and
megatron-core's model code are touched, so a bad configuration fails in seconds with one message.
"""

from __future__ import annotations

import os
import sys
import warnings

from moetrain.config import ConfigError
from moetrain.parallel import LayoutError
from moetrain.training.cli import parse_args

_USER_ERRORS = (ConfigError, LayoutError)


def prepare(argv: list[str] | None = None, world_size: int | None = None):
    """Parse + validate (no process group needed): (ResolvedRun, device backend, not yet set up)."""
    from moetrain.device import get_backend
    from moetrain.training.validate import resolve

    cfg = parse_args(argv)
    try:
        backend = get_backend(cfg.device)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(str(e)) from None
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    return resolve(cfg, world, backend.dist_backend), backend


def run_pretrain(argv: list[str] | None = None):
    """Validate and train in a process where torch.distributed is already initialised (tests)."""
    import torch.distributed as dist

    from moetrain.device import setup_device

    run, _ = prepare(argv, world_size=dist.get_world_size())
    backend = setup_device(run.cfg.device)
    return _workflow(run)(run, backend)


def _workflow(run):
    """Pretraining, or SFT for instruction data (ModelLink's ``pretrain_gpt.py --is-instruction-dataset``)."""
    if run.cfg.sft.is_instruction_dataset:
        from moetrain.finetune.sft import sft

        return sft
    from moetrain.training.loop import pretrain

    return pretrain


def main(argv: list[str] | None = None, prog: str = "moetrain-pretrain") -> int:
    warnings.filterwarnings("ignore", category=UserWarning, module="megatron")
    try:
        run, backend = prepare(argv)
        if run.cfg.dry_run:
            from moetrain.training.dry_run import describe_run

            print("\n".join([*run.notes, *describe_run(run)]))
            return 0
    except _USER_ERRORS as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":  # torchrun starts this in every rank: say it once
        for note in run.notes:
            print(f"{prog}: {note}")
    from moetrain.device import setup_device
    from moetrain.device.process_group import run_in_process_group
    from moetrain.training.loop import TrainingError

    backend = setup_device(run.cfg.device)
    # torchrun's group, or 1 process for plain `python -m`
    return run_in_process_group(backend, lambda: _workflow(run)(run, backend), (TrainingError, *_USER_ERRORS), prog)


if __name__ == "__main__":
    sys.exit(main())
