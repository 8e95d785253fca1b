"""Run a function on N gloo ranks on this machine and surface the failing rank's traceback.

    results = run_on_ranks(world_size=8, fn=my_check, args=(...), timeout=300)

``fn(rank, world_size, *args)`` must be a module-level function (it is looked up by file and name
in each child, so test modules need not be importable packages). torch.distributed is initialised
with gloo and the CPU device backend is set up before ``fn`` runs; ``fn``'s return value (picklable)
comes back in rank order.

Processes start from a *forkserver* that has already imported torch and megatron-core: 8 ranks
then cost one import, not eight (about 5 s each on this machine), and, unlike a plain fork of the
test process, the children never inherit a used OpenMP thread pool.
"""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
import pickle
import queue
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

_PRELOAD = ["torch", "megatron.core.models.gpt", "megatron.core.pipeline_parallel", "moetrain.device"]
_CONTEXT = None


class RankFailure(AssertionError):
    """A rank raised or the group timed out; the message holds the rank and its traceback."""


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = mp.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(_PRELOAD)
    return _CONTEXT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(file: str, name: str) -> Callable:
    module_name = f"_moetrain_rank_module_{Path(file).stem}"
    module = sys.modules.get(module_name)
    if module is None:
        # Rank modules may import their neighbours (shared test helpers), as under pytest.
        folder = str(Path(file).parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        spec = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return getattr(module, name)


def _child(rank: int, world_size: int, port: int, file: str, name: str, args: tuple, results, threads: int) -> None:
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
        import torch
        import torch.distributed as dist

        torch.set_num_threads(threads)
        from moetrain.device import setup_device

        setup_device("cpu")
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        fn = _load(file, name)
        value = fn(rank, world_size, *args)
        # Plain pickle, not the queue's shared-memory tensor passing: the child exits right after.
        results.put((rank, True, pickle.dumps(value)))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - everything goes back to the parent
        results.put((rank, False, traceback.format_exc()))


def kill_process_tree(pid: int) -> None:
    """SIGKILL a process (a rank) and its helper processes (megatron-core's checkpoint writer starts some; they
    would outlive the rank, holding the test run's output open)."""
    import psutil

    try:
        rank = psutil.Process(pid)
        for proc in [*rank.children(recursive=True), rank]:
            proc.kill()
    except psutil.NoSuchProcess:
        pass


def run_on_ranks(world_size: int, fn: Callable, args: Sequence = (), timeout: float = 300.0,
                 threads_per_rank: int = 1) -> list:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks; results in rank order."""
    file = sys.modules[fn.__module__].__file__
    ctx = _context()
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_child, args=(r, world_size, port, file, fn.__name__, tuple(args), results,
                                              threads_per_rank)) for r in range(world_size)]
    # Not daemonic: megatron's checkpoint writer starts a multiprocessing.Manager, which daemon
    # processes may not do. Stragglers are killed in the ``finally`` below.
    for p in procs:
        p.start()
    collected: dict[int, object] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(collected) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(world_size)) - set(collected))
                raise RankFailure(f"timed out after {timeout:.0f} s waiting for rank(s) {missing} "
                                  f"of {world_size} running {fn.__name__}")
            try:
                rank, ok, value = results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in collected]
                if dead:
                    raise RankFailure(f"rank {dead[0]} of {world_size} died (exit code "
                                      f"{procs[dead[0]].exitcode}) running {fn.__name__}") from None
                continue
            if not ok:
                raise RankFailure(f"rank {rank} of {world_size} failed in {fn.__name__}:\n{value}")
            collected[rank] = pickle.loads(value)
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                kill_process_tree(p.pid)
    return [collected[r] for r in range(world_size)]
