"""Run logs: console lines with ETA, ``metrics.jsonl``, ``run_info.json`` and TensorBoard.

Only one rank writes (the caller picks it: the last pipeline stage's first rank, which holds the
loss; every rank already has the loss through the step's pipeline broadcast, so in practice
global rank 0 writes). ``tools/benchmark.py`` reads ``run_info.json`` and ``metrics.jsonl``: their
keys are a schema, do not rename them.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

METRIC_KEYS = ("iteration", "lm_loss", "aux_loss", "lr", "grad_norm", "skipped_iters", "nan_iters", "step_time_s",
               "tokens_per_sec_per_device", "tflops_per_device", "mfu", "mem_peak_gb")
# Fine-tuning adds these (after METRIC_KEYS): tokens/s/p then counts real (non-pad) tokens only.
SFT_METRIC_KEYS = ("trained_tokens_per_sec", "padding_fraction")
RUN_INFO_KEYS = ("model", "model_config", "device", "device_name", "world_size", "tp", "pp", "ep", "dp",
                 "global_batch_size", "micro_batch_size", "seq_length", "dtype")


@dataclass
class Throughput:
    """Everything needed to turn a step time into tokens/s/p, TFLOPS and MFU."""

    global_batch_size: int
    seq_length: int
    devices: int
    flops_per_step: float
    peak_flops: float | None

    def metrics(self, step_seconds: float) -> dict:
        from moetrain.training import throughput

        return {
            "tokens_per_sec_per_device": throughput.tokens_per_sec_per_device(
                self.global_batch_size, self.seq_length, step_seconds, self.devices),
            "tflops_per_device": throughput.tflops_per_device(self.flops_per_step, step_seconds, self.devices),
            "mfu": throughput.mfu(self.flops_per_step, step_seconds, self.devices, self.peak_flops),
        }


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


class RunLogger:
    def __init__(self, log_dir: str | Path, writer: bool, train_iters: int, tensorboard: bool = True) -> None:
        self.writer = writer
        self.train_iters = train_iters
        self.log_dir = Path(log_dir)
        self.started = time.monotonic()
        self.start_iteration: int | None = None
        self._tb = None
        if writer:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.log_dir / "tensorboard"))

    def run_info(self, info: dict) -> None:
        if self.writer:
            missing = set(RUN_INFO_KEYS) - set(info)
            assert not missing, f"run_info lacks {missing}"
            (self.log_dir / "run_info.json").write_text(json.dumps(info, indent=2, default=str))

    def training_starts(self, iteration: int) -> None:
        """The ETA counts from here, not from the start-up steps before it."""
        self.started = time.monotonic()
        self.console(f"training from iteration {iteration} to {self.train_iters}")

    def console(self, text: str) -> None:
        if self.writer:
            print(text, flush=True)

    def metrics(self, record: dict) -> None:
        """One metrics.jsonl line (keys exactly METRIC_KEYS, then SFT_METRIC_KEYS when given), a console
        line and TensorBoard scalars."""
        if not self.writer:
            return
        keys = METRIC_KEYS + tuple(k for k in SFT_METRIC_KEYS if k in record)
        record = {k: _finite_or_none(record.get(k)) for k in keys}
        if record["lm_loss"] is None:
            record["lm_loss"] = None  # JSON has no NaN: a skipped NaN step logs null
        with open(self.log_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        it = record["iteration"]
        if self.start_iteration is None:
            self.start_iteration = it - 1
        done = it - self.start_iteration
        elapsed = time.monotonic() - self.started
        eta = elapsed / max(done, 1) * (self.train_iters - it)
        self.console(
            f"iter {it:>6}/{self.train_iters} | lm loss {_fmt(record['lm_loss'], '.4f')} | "
            f"aux {_fmt(record['aux_loss'], '.4f')} | lr {_fmt(record['lr'], '.3e')} | "
            f"grad norm {_fmt(record['grad_norm'], '.3f')} | step {_fmt(record['step_time_s'], '.3f')} s | "
            f"tokens/s/p {_fmt(record['tokens_per_sec_per_device'], '.1f')} | "
            f"TFLOPS {_fmt(record['tflops_per_device'], '.3g')} | MFU {_fmt(record['mfu'], '.2%')} | "
            f"mem {_fmt(record['mem_peak_gb'], '.2f')} GB | skipped {record['skipped_iters']} "
            f"nan {record['nan_iters']} | "
            + (f"trained tokens/s {_fmt(record['trained_tokens_per_sec'], '.1f')} | "
               f"padding {_fmt(record['padding_fraction'], '.1%')} | " if "padding_fraction" in record else "")
            + f"ETA {eta / 60:.1f} min")
        if self._tb is not None:
            for key in keys[1:]:
                if isinstance(record[key], (int, float)):
                    self._tb.add_scalar(f"train/{key}", record[key], it)

    def eval(self, iteration: int, split: str, loss: float) -> None:
        ppl = math.exp(min(loss, 20.0))
        self.console(f"{split} loss at iteration {iteration}: {loss:.4f} | {split} ppl {ppl:.3f}")
        if self.writer:
            with open(self.log_dir / "eval.jsonl", "a") as f:
                f.write(json.dumps({"iteration": iteration, "split": split, "lm_loss": loss}) + "\n")
            if self._tb is not None:
                self._tb.add_scalar(f"{split}/lm_loss", loss, iteration)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
