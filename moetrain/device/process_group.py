"""The job's torch.distributed group: torchrun's environment, or a 1-process group for a plain
``python -m ...`` (so every entry point runs without torchrun on one device)."""

from __future__ import annotations

import os


def init_process_group(backend) -> bool:
    """Initialise torch.distributed for ``backend`` unless it already is; True if this call created it."""
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    backend.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if "MASTER_ADDR" not in os.environ:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29500"),
                          RANK="0", WORLD_SIZE="1")
    dist.init_process_group(backend.dist_backend)
    return True


def run_in_process_group(backend, job, user_errors: tuple[type[BaseException], ...], prog: str) -> int:
    """Run ``job()`` in the job's process group: exit status 0, or 1 with one line from rank 0 when
    it raises one of ``user_errors`` (a message meant for the user, not a traceback per rank)."""
    import sys

    import torch.distributed as dist

    created = init_process_group(backend)
    try:
        job()
    except user_errors as e:
        if dist.get_rank() == 0:
            print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()
    return 0
