"""CPU backend: gloo collectives, megatron-core redirected from CUDA to the CPU."""

from __future__ import annotations

import platform
import resource
import sys

from moetrain.device.base import DeviceBackend, MemoryStats


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


class CpuBackend(DeviceBackend):
    name = "cpu"
    device_type = "cpu"
    dist_backend = "gloo"
    # With PP=2 a rank's previous and next stage are the same peer. In the interleaved schedule one
    # batch_isend_irecv then carries an activation and a gradient each way between the same two
    # ranks, and gloo matches them by order, not by meaning: they arrive swapped (measured: the
    # losses of micro-batches 3 and 4 of a step differed from a 1-rank run). Separate isend/irecv
    # calls go through two communicators (megatron-core's non-batched path) and match correctly.
    batch_p2p_comm = False

    @classmethod
    def is_available(cls) -> bool:
        return True

    def setup(self) -> None:
        from moetrain.device import cpu_redirects

        cpu_redirects.apply()

    def device_name(self) -> str:
        return platform.processor() or platform.machine() or "cpu"

    def memory_stats(self) -> MemoryStats:
        # Process resident memory: on CPU weights, activations and the runtime share it.
        rss = _rss_bytes()
        return MemoryStats(allocated=rss, peak_allocated=_peak_rss_bytes(), reserved=rss)
