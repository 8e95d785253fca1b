"""LoRA vs full-parameter fine-tuning on CPU: step time side by side, and the planner's LoRA memory vs the live tensors.

    python tools/bench_lora.py [--steps 4] [--warmup 1] [--rounds 5] [--lora-r 16]

The CPU benchmark shape of tools/bench_throughput.py (mixtral-tiny widened: hidden 256, 4 layers, 8
experts top-2, FFN 512, vocab 32000, batch 8 x seq 256, fp32, 2 threads, 1 process). Both models are
built as fine-tuning builds them (``moetrain.training.trainer.build_model_and_optimizer``: megatron
DDP, megatron's Adam; LoRA through ``moetrain.finetune.lora.apply_lora`` on every linear and expert)
and step through the trainer's step (``moetrain.training.step.train_step``) with SFT's forward step on
the same batches (prompt quarter of each row masked out of the loss). Step times: the two models
step alternately (rounds x steps times each); the best and the median of each are kept. Then, for
each model: bytes of its parameters, gradients and optimizer state (tensors counted from the live
model and optimizer) and the saved-for-backward bytes of one micro-batch, against
``moetrain.planner.memory_per_stage`` for the same layout; exit status 1 if any differs by more
than 10 %.

Writes docs/bench/lora_cpu.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FLAVOR = "mixtral-tiny"
SHAPE = dict(num_layers=4, hidden_size=256, ffn_hidden_size=512, num_attention_heads=8, num_query_groups=8,
             vocab_size=32000, seq_length=256, num_experts=8, moe_router_topk=2)
BATCH = 8
TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")
TOLERANCE = 0.10  # the planner's figures must agree with the measured ones within this


def _batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, SHAPE["vocab_size"], (BATCH, SHAPE["seq_length"]), generator=g)
    loss_mask = torch.ones(BATCH, SHAPE["seq_length"])
    loss_mask[:, : SHAPE["seq_length"] // 4] = 0  # the prompt
    return {"tokens": tokens, "labels": torch.roll(tokens, -1, 1), "loss_mask": loss_mask,
            "position_ids": torch.arange(SHAPE["seq_length"]).unsqueeze(0).expand(BATCH, -1),
            "padding_mask": torch.zeros(BATCH, SHAPE["seq_length"], dtype=torch.bool)}


def _resolved_run():
    from moetrain.config import PretrainConfig, TrainingSection
    from moetrain.training.validate import resolve

    run = resolve(PretrainConfig(model=FLAVOR, model_overrides=dict(SHAPE), training=TrainingSection(
        micro_batch_size=BATCH, global_batch_size=BATCH, seq_length=SHAPE["seq_length"], train_iters=0)), 1)
    # SFT's transformer config (per-token loss scaling); the data itself is this script's
    run.cfg.sft.is_instruction_dataset = True
    return run


class _Model:
    """One fine-tuning setup on this rank: model, optimizer and its step."""

    def __init__(self, run, lora_r: int | None) -> None:
        from moetrain.device import get_backend
        from moetrain.training.trainer import build_model_and_optimizer

        prepare = None
        if lora_r:
            from moetrain.finetune.lora.apply import apply_lora

            def prepare(chunk):
                apply_lora(chunk, set(TARGETS), lora_r, 2.0 * lora_r, 0.0)

        self.run, self.lora_r = run, lora_r
        self.model, self.optimizer, _, self.padded = build_model_and_optimizer(
            run, get_backend().batch_p2p_comm, prepare_chunk=prepare)
        self.steps = 0

    def step(self) -> float:
        from moetrain.training import step as step_mod
        from moetrain.training.sft_step import sft_forward_step

        batches = iter([_batch(self.steps)])
        self.steps += 1
        start = time.perf_counter()
        result = step_mod.train_step(self.model, self.optimizer, batches, 1, SHAPE["seq_length"], BATCH,
                                     SHAPE["num_layers"], forward_step_func=sft_forward_step)
        seconds = time.perf_counter() - start
        assert not result.skipped, "a benchmark step was skipped"
        return seconds

    def measured(self) -> dict:
        """Bytes the live tensors hold: parameters, gradients (main_grad), optimizer state; and the
        saved-for-backward bytes of one micro-batch forward + backward."""
        from moetrain.planner.measured import SavedTensorTracker, _optimizer_bytes

        ddp = self.model[0]
        params = list(ddp.module.parameters())
        trainable = [p for p in params if p.requires_grad]
        ptrs = {p.untyped_storage().data_ptr() for p in params}
        optimizer, adam, master = _optimizer_bytes(self.optimizer, ptrs)
        b = _batch(10_000)
        tracker = SavedTensorTracker(ptrs)
        ddp.zero_grad_buffer()
        with tracker.hooks():
            out = ddp(b["tokens"], b["position_ids"], None, labels=b["labels"])
            tracker.phase = "backward"
            out.float().sum().backward()
        return {"parameters": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in trainable),
                "weights": sum(p.numel() * p.element_size() for p in params),
                "gradients": sum(p.main_grad.numel() * p.main_grad.element_size() for p in trainable),
                "optimizer": optimizer, "adam": adam, "master": master,
                "activations": tracker.total("forward")}


def predicted(lora_r: int | None, padded: int) -> dict:
    """The planner's figures for this one-rank layout (one micro-batch of activations)."""
    from moetrain.models.registry import get_flavor
    from moetrain.planner import Layout, Setup, memory_per_stage
    from moetrain.planner.memory import LoraSetup

    cfg = get_flavor(FLAVOR, **SHAPE)
    setup = Setup(BATCH, BATCH, SHAPE["seq_length"], bf16=False, flash_attention=True, padded_vocab_size=padded,
                  lora=LoraSetup(lora_r, TARGETS) if lora_r else None)
    s = memory_per_stage(cfg, Layout(world_size=1), setup)[0]
    return {"trainable": s.trainable, "weights": s.weights, "gradients": s.gradients, "optimizer": s.optimizer,
            "activations": s.activations}


def planner_compute_ratio(lora_r: int, padded: int) -> float:
    """The planner's LoRA step compute over the full step's (what its step-time estimate scales by)."""
    from moetrain.models.registry import get_flavor
    from moetrain.planner import Setup
    from moetrain.planner.memory import LoraSetup
    from moetrain.planner.plan import lora_step_flops
    from moetrain.training.flops import flops_per_iteration

    cfg = get_flavor(FLAVOR, **SHAPE)
    setup = Setup(BATCH, BATCH, SHAPE["seq_length"], bf16=False, padded_vocab_size=padded,
                  lora=LoraSetup(lora_r, TARGETS))
    return lora_step_flops(cfg, setup) / flops_per_iteration(cfg, BATCH, SHAPE["seq_length"], padded_vocab_size=padded)


def bench_rank(rank, world, steps: int, warmup: int, rounds: int, lora_r: int, threads: int) -> dict:
    """Runs in a spawned 1-rank gloo group (megatron-core needs its parallel state)."""
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    del rank, world
    torch.set_num_threads(threads)
    run = _resolved_run()
    run.dims.initialize()
    model_parallel_cuda_manual_seed(0)
    models = {"full": _Model(run, None), "lora": _Model(run, lora_r)}
    for m in models.values():
        for _ in range(warmup):
            m.step()
    # Interleaved step by step (other load on the machine hits both alike); best-of and median per model.
    times = {name: [] for name in models}
    for _ in range(rounds * steps):
        for name, m in models.items():
            times[name].append(m.step())
    out = {"step_s": {name: min(t) for name, t in times.items()},
           "median_step_s": {name: statistics.median(t) for name, t in times.items()}}
    for name, m in models.items():
        out[name] = {"measured": m.measured(), "predicted": predicted(m.lora_r, m.padded), "padded": m.padded}
    return out


def _rows(name: str, figures: dict) -> list[dict]:
    meas, pred = figures["measured"], figures["predicted"]
    rows = []
    state_m = meas["weights"] + meas["gradients"] + meas["optimizer"]
    state_p = pred["weights"] + pred["gradients"] + pred["optimizer"]
    for comp, m, p in (("trainable parameters", meas["trainable"], pred["trainable"]),
                       ("weights", meas["weights"], pred["weights"]),
                       ("gradients", meas["gradients"], pred["gradients"]),
                       ("optimizer state", meas["optimizer"], pred["optimizer"]),
                       ("weights + grads + optimizer", state_m, state_p),
                       ("activations (1 micro-batch)", meas["activations"], pred["activations"]),
                       ("total (state + activations)", state_m + meas["activations"], state_p + pred["activations"])):
        rows.append({"run": name, "component": comp, "measured": m, "predicted": p,
                     "error_pct": 100.0 * (p - m) / m if m else None})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of --steps alternating steps per model")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "lora_cpu.json")
    args = parser.parse_args()

    from moetrain.testing.spawn import run_on_ranks

    start = time.perf_counter()
    (out,) = run_on_ranks(1, bench_rank, (args.steps, args.warmup, args.rounds, args.lora_r, args.threads),
                          timeout=1800, threads_per_rank=args.threads)
    rows = _rows("full", out["full"]) + _rows("lora", out["lora"])
    step = out["step_s"]
    tokens = BATCH * SHAPE["seq_length"]
    lora_state = next(r for r in rows if r["run"] == "lora" and r["component"] == "weights + grads + optimizer")
    full_state = next(r for r in rows if r["run"] == "full" and r["component"] == "weights + grads + optimizer")
    result = {
        "shape": {"flavor": FLAVOR, **SHAPE, "batch": BATCH, "dtype": "fp32", "optimizer": "Adam (megatron)",
                  "threads": args.threads, "ranks": 1},
        "lora": {"r": args.lora_r, "alpha": 2.0 * args.lora_r, "target_modules": list(TARGETS)},
        "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
        "step_s": step, "tokens_per_s": {k: tokens / v for k, v in step.items()},
        "median_step_s": out["median_step_s"],
        "ratio_lora_over_full_step_time": step["lora"] / step["full"],
        "ratio_lora_over_full_median_step_time": out["median_step_s"]["lora"] / out["median_step_s"]["full"],
        "ratio_lora_over_full_model_state": lora_state["measured"] / full_state["measured"],
        "planner_compute_ratio_lora_over_full": planner_compute_ratio(args.lora_r, out["full"]["padded"]),
        "tolerance_pct": 100 * TOLERANCE, "rows": rows, "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"step time: full {step['full']:.3f} s, LoRA r {args.lora_r} {step['lora']:.3f} s "
          f"(LoRA / full {result['ratio_lora_over_full_step_time']:.2f} best of {args.rounds * args.steps} "
          f"alternating steps, {result['ratio_lora_over_full_median_step_time']:.2f} median; the planner's compute "
          f"ratio {result['planner_compute_ratio_lora_over_full']:.2f})")
    print(f"model state (weights + grads + optimizer): LoRA / full {result['ratio_lora_over_full_model_state']:.3f}")
    print("\n| run | component | predicted | measured | error % |\n|---|---|---:|---:|---:|")
    for r in rows:
        err = "n/a" if r["error_pct"] is None else f"{r['error_pct']:+.2f}"
        print(f"| {r['run']} | {r['component']} | {r['predicted']:,.0f} | {r['measured']:,.0f} | {err} |")
    bad = [r for r in rows if r["error_pct"] is not None and abs(r["error_pct"]) > 100 * TOLERANCE]
    for r in bad:
        print(f"bench_lora: {r['run']} {r['component']}: planner off by {r['error_pct']:+.1f} %")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
