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
