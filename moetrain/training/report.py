"""Benchmark report from a run's log dir: run_info.json + metrics.jsonl -> JSON, Markdown and a PNG.

Throughput is recomputed from the mean step time over the measured (post-warm-up) iterations:
total tokens / total time, which is what the reference tables quote, rather than the mean of the
per-iteration rates (that would over-weight fast iterations).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from moetrain.device.peak_flops import peak_flops
from moetrain.models.config import ModelConfig
from moetrain.training.flops import flops_per_iteration
from moetrain.training.throughput import mfu, tflops_per_device, tokens_per_sec_per_device

RUN_INFO = "run_info.json"
METRICS = "metrics.jsonl"
MD_HEADER = ("Device", "Model", "Layout (TP/PP/EP)", "GBS", "Seq", "tokens/s/p", "s/step",
             "TFLOPS/device", "MFU", "peak mem/rank")


@dataclass
class BenchmarkSummary:
    device: str
    model: str
    world_size: int
    tp: int
    pp: int
    ep: int
    dp: int
    global_batch_size: int
    seq_length: int
    dtype: str
    warmup: int
    measured_iterations: int
    step_seconds: float
    tokens_per_sec_per_device: float
    tflops_per_device: float | None
    mfu: float | None
    peak_mem_gb: float | None
    final_lm_loss: float | None
    reference: dict[str, float] = dataclasses.field(default_factory=dict)
    # whole model, from run_info (None for logs written before these were recorded)
    parameters: int | None = None
    trainable_parameters: int | None = None  # all of them, or a LoRA run's adapters (+ router)

    @property
    def layout(self) -> str:
        return f"{self.tp}/{self.pp}/{self.ep}"

    def ratios(self) -> dict[str, float]:
        """Ours / reference tokens/s/p for each reference figure."""
        return {k: self.tokens_per_sec_per_device / v for k, v in self.reference.items()}


def load_run(log_dir: str | Path) -> tuple[dict, list[dict]]:
    log_dir = Path(log_dir)
    info_path, metrics_path = log_dir / RUN_INFO, log_dir / METRICS
    for path in (info_path, metrics_path):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: is {log_dir} a training log dir?")
    info = json.loads(info_path.read_text())
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    return info, records


def parse_reference(text: str | None) -> dict[str, float]:
    """'NPU:1646.6,GPU:2057' -> {'NPU': 1646.6, 'GPU': 2057.0}."""
    out: dict[str, float] = {}
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        name, sep, value = item.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError as exc:
            raise ValueError(f"--reference item {item!r}: expected NAME:tokens_per_sec, e.g. NPU:1646.6") from exc
    return out


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def summarize(
    info: dict, records: list[dict], warmup: int = 0, reference: dict[str, float] | None = None,
    peak_tflops: float | None = None,
) -> BenchmarkSummary:
    """Summary over the iterations after the first ``warmup`` ones."""
    measured = [r for r in records if r.get("iteration", 0) > warmup and r.get("step_time_s")]
    if not measured:
        raise ValueError(f"no iterations with a step time after --warmup {warmup} ({len(records)} logged)")
    world, gbs, seq = int(info["world_size"]), int(info["global_batch_size"]), int(info["seq_length"])
    step = _mean([r["step_time_s"] for r in measured])
    dtype = str(info.get("dtype", "bf16"))
    tflops = achieved_mfu = None
    if info.get("model_config"):
        cfg = ModelConfig.from_dict(info["model_config"])
        flops = flops_per_iteration(cfg, gbs, seq)
        tflops = tflops_per_device(flops, step, world)
        # a CPU's marketing name could contain a table key by accident: CPUs have no entry
        name = "cpu" if info.get("device") == "cpu" else str(info.get("device_name", ""))
        peak = peak_flops(name, dtype, peak_tflops)
        achieved_mfu = mfu(flops, step, world, peak)
    else:  # fall back to what the trainer logged
        tflops = _mean([r.get("tflops_per_device") for r in measured])
        achieved_mfu = _mean([r.get("mfu") for r in measured])
    mems = [r["mem_peak_gb"] for r in measured if r.get("mem_peak_gb") is not None]
    losses = [r["lm_loss"] for r in records if r.get("lm_loss") is not None]
    device_name = str(info.get("device_name") or info.get("device", "?"))
    return BenchmarkSummary(
        device=f"{world} x {device_name}", model=str(info.get("model", "?")), world_size=world,
        tp=int(info.get("tp", 1)), pp=int(info.get("pp", 1)), ep=int(info.get("ep", 1)),
        dp=int(info.get("dp", 1)), global_batch_size=gbs, seq_length=seq, dtype=dtype, warmup=warmup,
        measured_iterations=len(measured), step_seconds=step,
        tokens_per_sec_per_device=tokens_per_sec_per_device(gbs, seq, step, world),
        tflops_per_device=tflops, mfu=achieved_mfu, peak_mem_gb=max(mems) if mems else None,
        final_lm_loss=losses[-1] if losses else None, reference=dict(reference or {}),
        parameters=info.get("parameters"), trainable_parameters=info.get("trainable_parameters"),
    )


def _opt(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def markdown(summary: BenchmarkSummary) -> str:
    s = summary
    row = (s.device, s.model, s.layout, str(s.global_batch_size), str(s.seq_length),
           f"{s.tokens_per_sec_per_device:.1f}", f"{s.step_seconds:.2f}", _opt(s.tflops_per_device, ".3g"),
           "n/a" if s.mfu is None else f"{s.mfu:.1%}",
           "n/a" if s.peak_mem_gb is None else f"{s.peak_mem_gb:.1f} GB")
    lines = ["| " + " | ".join(MD_HEADER) + " |", "|" + "---|" * len(MD_HEADER), "| " + " | ".join(row) + " |"]
    if s.reference:
        lines += ["", "| Reference | tokens/s/p | ours / reference |", "|---|---|---|"]
        lines.append(f"| ours ({s.device}) | {s.tokens_per_sec_per_device:.1f} | 1.00 |")
        for name, value in s.reference.items():
            lines.append(f"| {name} | {value:g} | {s.tokens_per_sec_per_device / value:.2f} |")
    lines += ["", f"Mean over {s.measured_iterations} logged iterations after {s.warmup} warm-up iterations; "
              f"{s.dtype}; DP {s.dp}."]
    if s.trainable_parameters is not None and s.parameters:
        lines.append(f"Trainable parameters: {s.trainable_parameters:,} of {s.parameters:,} "
                     f"({s.trainable_parameters / s.parameters:.2%}).")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], warmup: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training hosts
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_tps) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    loss = [(r["iteration"], r["lm_loss"]) for r in records if r.get("lm_loss") is not None]
    tps = [(r["iteration"], r["tokens_per_sec_per_device"]) for r in records
           if r.get("tokens_per_sec_per_device") is not None]
    if loss:
        ax_loss.plot(*zip(*loss), marker=".")
    ax_loss.set_ylabel("lm loss")
    if tps:
        ax_tps.plot(*zip(*tps), marker=".")
    ax_tps.axvspan(0, warmup + 0.5, color="grey", alpha=0.2, label="warm-up (excluded)")
    ax_tps.set_ylabel("tokens/s/p")
    ax_tps.set_xlabel("iteration")
    ax_tps.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    log_dir: str | Path, out_dir: str | Path | None = None, warmup: int = 0,
    reference: dict[str, float] | None = None, peak_tflops: float | None = None,
) -> dict[str, Path]:
    """Write report.json, report.md and report.png into ``out_dir`` (default: the log dir)."""
    info, records = load_run(log_dir)
    summary = summarize(info, records, warmup, reference, peak_tflops)
    out = Path(out_dir or log_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "report.png"}
    data = {**dataclasses.asdict(summary), "layout": summary.layout, "ratios": summary.ratios()}
    paths["json"].write_text(json.dumps(data, indent=2) + "\n")
    paths["md"].write_text(markdown(summary))
    plot(records, warmup, paths["png"])
    return paths
