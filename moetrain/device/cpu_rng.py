"""CPU stand-in for megatron-core's CUDA RNG tracker.

megatron-core seeds tensor-, expert- and data-parallel replicas through
``model_parallel_cuda_manual_seed`` and a tracker of *CUDA* generator states; parameters and
dropout masks drawn inside ``tracker.fork(name)`` come from that state. On a CPU every random op
draws from the global CPU generator, so a tracker that only kept device states would make the
fork a no-op: replicated parameters (router, experts under expert-TP 1) would then differ between
TP ranks and the initial loss would change from run to run (measured, see DESIGN.md).

This tracker keeps one CPU generator state per name and swaps it into the global CPU generator
for the duration of ``fork`` — the exact CPU analogue of what the CUDA tracker does with the
device generator. The "device default generator" that ``torch.cuda.get/set_rng_state`` address is
a dedicated ``torch.Generator`` here (``DEVICE_GENERATOR``), so checkpointing code that saves and
restores it round-trips.
"""

from __future__ import annotations

import contextlib

import torch

# Stands in for torch.cuda.default_generators[0] on CPU.
DEVICE_GENERATOR = torch.Generator(device="cpu")


def get_device_rng_state(device=None, clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    del device, clone, graph_safe
    return DEVICE_GENERATOR.get_state()


def set_device_rng_state(new_state: torch.Tensor, device=None, graph_safe: bool = False) -> None:
    del device, graph_safe
    DEVICE_GENERATOR.set_state(new_state)


def device_manual_seed(seed: int) -> None:
    # megatron-core calls torch.cuda.manual_seed(data_parallel_seed) for the default state, the
    # one used outside any fork: on CPU that state *is* the global generator.
    torch.default_generator.manual_seed(seed)
    DEVICE_GENERATOR.manual_seed(seed)


def make_cpu_tracker_class(base: type) -> type:
    """Subclass of megatron-core's CudaRNGStatesTracker whose states are CPU generator states."""

    class CpuRNGStatesTracker(base):
        def add(self, name: str, seed: int) -> None:
            self._is_initialized = True
            if seed in self.seeds_:
                raise RuntimeError(f"RNG seed {seed} already exists in the tracker")
            if name in self.states_:
                raise RuntimeError(f"RNG state {name!r} already exists in the tracker")
            self.seeds_.add(seed)
            generator = torch.Generator(device="cpu")
            generator.manual_seed(seed)
            self.states_[name] = generator.get_state()

        @contextlib.contextmanager
        def fork(self, name: str = "model-parallel-rng"):
            if name not in self.states_:
                raise RuntimeError(f"RNG state {name!r} was never added to the tracker")
            outer_state = torch.get_rng_state()
            outer_name = self._current_state_name
            torch.set_rng_state(self.states_[name])
            self._current_state_name = name
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(outer_state)
                self._current_state_name = outer_name

    CpuRNGStatesTracker.__qualname__ = "CpuRNGStatesTracker"
    return CpuRNGStatesTracker
