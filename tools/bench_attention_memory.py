#!/usr/bin/env python
"""Peak memory and time of Grok-1's soft-capped attention: the torch reference vs flex_attention.

One Grok-1 attention layer with fewer heads: b=1, 8 query heads, 2 KV heads (Grok-1: 48 / 8),
head dim 128, seq 4096, scale 1/sqrt(128), soft-cap 30, causal, fp32, ``torch.set_num_threads``
= all cores. Paths, each run once to warm up (compiling where it compiles), then timed
(best of ``--reps``), then once more under the profiler for memory:

- reference fwd+bwd, reference fwd (no grad): ``attention_reference`` materialises [b, h, s, s];
- flex compiled fwd: ``attention_flex(compiled=True)`` under no grad (compile time reported apart);
- flex uncompiled fwd: torch's math fallback (materialises the scores too);
- flex compiled fwd+bwd: only where torch has a flex backward (not on CPU in torch 2.13).

Peak memory = the highest total of tensor bytes allocated and not yet freed during the call,
above what was live before it (inputs excluded), replayed from ``torch.profiler`` memory events
(every allocation through torch's CPU allocator, the compiled kernel's scratch buffers included).
Unlike ``ru_maxrss`` this neither includes the compiler's own memory nor misses freed-but-resident
heap reuse. On an accelerator (``--device``) the backend's allocator peak is used instead.

    .venv/bin/python tools/bench_attention_memory.py [--seq 4096] [--reps 2] [--device cpu]

Writes docs/bench/attention_memory_cpu.json (``--output``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moetrain.kernels.attention import attention_reference  # noqa: E402
from moetrain.kernels.attention_flex import attention_flex  # noqa: E402

BATCH, HEADS, KV_HEADS, HEAD_DIM, SOFTCAP = 1, 8, 2, 128, 30.0


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} x {model} ({platform.machine()}), {gib:.0f} GiB"


def profiled_peak(fn) -> int:
    """Peak live tensor bytes above the starting point while ``fn`` runs (CPU allocator events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # The raw event stream: the EventList folds allocations into the ops that made them.
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def backend_peak(backend, fn) -> int:
    backend.synchronize()
    before = backend.memory_stats().allocated
    backend.reset_peak_memory()
    fn()
    backend.synchronize()
    return backend.memory_stats().peak_allocated - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or an accelerator backend name (cuda, npu)")
    parser.add_argument("--output", default=None, help="default: docs/bench/attention_memory_<device>.json")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    on_cpu = args.device == "cpu"
    if on_cpu:
        device, sync = torch.device("cpu"), (lambda: None)
    else:
        from moetrain.device.selection import setup_device

        backend = setup_device(args.device)
        backend.set_device(0)
        device, sync = backend.device(0), backend.synchronize

    s = args.seq
    gen = torch.Generator().manual_seed(0)
    q0 = torch.randn(BATCH, HEADS, s, HEAD_DIM, generator=gen).to(device)
    k0, v0 = (torch.randn(BATCH, KV_HEADS, s, HEAD_DIM, generator=gen).to(device) for _ in range(2))
    scale = HEAD_DIM ** -0.5

    def run(attend, backward: bool):
        def call():
            if backward:
                q, k, v = (t.detach().requires_grad_() for t in (q0, k0, v0))
                out = attend(q, k, v, scale, SOFTCAP, True)
                out.backward(torch.ones_like(out))
            else:
                with torch.no_grad():
                    attend(q0, k0, v0, scale, SOFTCAP, True)
            sync()
        return call

    def flex(compiled):
        return lambda *a: attention_flex(*a, compiled=compiled)

    paths = [("reference", "fwd+bwd", run(attention_reference, True)),
             ("reference", "fwd", run(attention_reference, False)),
             ("flex compiled", "fwd", run(flex(True), False)),
             ("flex uncompiled (math)", "fwd", run(flex(False), False))]
    if not on_cpu:
        paths.insert(1, ("flex compiled", "fwd+bwd", run(flex(True), True)))
    rows = []
    for name, passes, call in paths:
        start = time.perf_counter()
        call()  # warm-up: compiles the flex kernel, builds and caches the block mask
        first = time.perf_counter() - start
        times = []
        for _ in range(args.reps):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        peak = profiled_peak(call) if on_cpu else backend_peak(backend, call)
        rows.append({"path": name, "passes": passes, "peak_mib": round(peak / 2**20, 1),
                     "time_s": round(min(times), 3), "first_call_s": round(first, 2)})
        print(f"[bench] {name} {passes}: peak {peak / 2**20:.0f} MiB, {min(times):.2f} s", flush=True)

    by = {(r["path"], r["passes"]): r for r in rows}
    ref_fwd, flex_fwd = by[("reference", "fwd")], by[("flex compiled", "fwd")]
    result = {
        "date": datetime.date.today().isoformat(), "machine": machine(), "device": args.device,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "shape": {"batch": BATCH, "heads": HEADS, "kv_heads": KV_HEADS, "seq": s, "head_dim": HEAD_DIM,
                  "dtype": "float32", "softcap": SOFTCAP, "causal": True},
        "scores_tensor_mib": BATCH * HEADS * s * s * 4 / 2**20,  # one fp32 [b, h, s, s]
        "memory": "torch.profiler allocator events (peak live bytes above the inputs)" if on_cpu
                  else "backend peak_allocated minus allocated before the call",
        "rows": rows,
        "fwd_peak_ratio_reference_over_flex": round(ref_fwd["peak_mib"] / max(flex_fwd["peak_mib"], 1e-9), 1),
        "fwd_time_ratio_reference_over_flex": round(ref_fwd["time_s"] / flex_fwd["time_s"], 2),
    }
    if ("flex compiled", "fwd+bwd") in by:
        ref, fl = by[("reference", "fwd+bwd")], by[("flex compiled", "fwd+bwd")]
        result["fwd_bwd_peak_ratio_reference_over_flex"] = round(ref["peak_mib"] / max(fl["peak_mib"], 1e-9), 1)
        result["fwd_bwd_time_ratio_reference_over_flex"] = round(ref["time_s"] / fl["time_s"], 2)
    else:
        result["flex_fwd_bwd"] = f"not available on {args.device}: torch {torch.__version__} has no CPU flex backward"
    output = Path(args.output or ROOT / "docs" / "bench" / f"attention_memory_{args.device}.json")
    output.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\nseq {s}, b={BATCH}, heads {HEADS}/{KV_HEADS} KV, head dim {HEAD_DIM}, fp32, {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| path | passes | peak memory (MiB) | time (s) | first call (s) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['passes']} | {r['peak_mib']:.0f} | {r['time_s']:.2f} | {r['first_call_s']:.1f} |")
    print(f"\none fp32 [b, h, s, s] scores tensor: {result['scores_tensor_mib']:.0f} MiB; forward peak "
          f"reference / flex: {result['fwd_peak_ratio_reference_over_flex']}x; results in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
