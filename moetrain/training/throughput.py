"""Throughput as users compare it: tokens/s/p, TFLOPS per device and MFU.

tokens/s/p = global_batch x seq_length / (step_seconds x devices), counted over *all* devices of the
job (TP/PP/EP ranks included), which is how the reference tables quote it.
"""

from __future__ import annotations


def _check(step_seconds: float, devices: int) -> None:
    if step_seconds <= 0:
        raise ValueError(f"step time must be positive, got {step_seconds}")
    if devices < 1:
        raise ValueError(f"device count must be >= 1, got {devices}")


def tokens_per_sec_per_device(global_batch_size: int, seq_length: int, step_seconds: float, devices: int) -> float:
    _check(step_seconds, devices)
    return global_batch_size * seq_length / (step_seconds * devices)


def tflops_per_device(flops_per_step: float, step_seconds: float, devices: int) -> float:
    """Achieved model TFLOP/s per device (``flops_per_step`` from ``flops_per_iteration``)."""
    _check(step_seconds, devices)
    return flops_per_step / (step_seconds * devices) / 1e12


def mfu(flops_per_step: float, step_seconds: float, devices: int, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1]; None when the device peak is unknown."""
    if not peak_flops:
        return None
    return tflops_per_device(flops_per_step, step_seconds, devices) * 1e12 / peak_flops


def step_seconds_for_mfu(flops_per_step: float, devices: int, peak_flops: float, assumed_mfu: float) -> float:
    """The step time a job would take at ``assumed_mfu`` (the planner's prediction)."""
    if not 0 < assumed_mfu <= 1:
        raise ValueError(f"--assumed-mfu must be in (0, 1], got {assumed_mfu}")
    return flops_per_step / (devices * peak_flops * assumed_mfu)
