"""`make bench`: every benchmark of the project, one after the other, each writing its own results.

    python tools/bench_all.py [--only preprocess,convert,throughput,generate,planner,train,attention_memory,lora]

Results: docs/bench/*.json (machine-readable) and the sections of docs/benchmarks.md. A benchmark
whose script is missing or fails is reported, and the others still run; the exit code is non-zero
if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

BENCHMARKS = {
    # name: command (run from the repository root)
    "preprocess": [PY, "tools/bench_preprocess.py"],
    "convert": [PY, "tools/bench_convert.py"],
    "throughput": [PY, "tools/bench_throughput.py"],
    # Generation on one CPU process, side by side with HF generate on the same weights.
    "generate": [PY, "tools/bench_generate.py"],
    "planner": [PY, "tools/bench_planner.py"],
    # A real training run of the tiny Grok-1 recipe (TP2 PP2 EP2 on 8 CPU ranks), then its report.
    "train": [PY, "tools/bench_train.py"],
    "attention_memory": [PY, "tools/bench_attention_memory.py"],
    # LoRA vs full fine-tuning step time on one CPU process, and the planner's LoRA memory vs the live tensors.
    "lora": [PY, "tools/bench_lora.py"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    args = parser.parse_args()
    failed = []
    for name in args.only.split(","):
        command = BENCHMARKS.get(name)
        if command is None:
            print(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
            return 2
        script = ROOT / command[1]
        if not script.exists():
            print(f"[bench] {name}: {command[1]} is missing — skipped")
            failed.append(name)
            continue
        print(f"[bench] {name}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call(command, cwd=ROOT)
        print(f"[bench] {name}: exit {rc} after {time.perf_counter() - start:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"[bench] failed or missing: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("[bench] all done; see docs/benchmarks.md and docs/bench/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
