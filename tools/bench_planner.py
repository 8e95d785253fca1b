"""The planner's per-rank memory prediction vs what real training components hold (tiny flavors, CPU).

    python tools/bench_planner.py [--layouts 1rank,TP2,...] [--out docs/bench/planner_vs_measured.json]

Every layout runs as one group of gloo ranks (moetrain.planner.measured): model, megatron DDP and
optimizer built as pretraining builds them, one micro-batch forward + backward under saved-tensor
hooks, one optimizer step. Prints a Markdown table (layout, component, predicted, measured, error %)
and writes all rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from moetrain.planner.measured import LAYOUTS, Case, compare, measure_cases
from moetrain.testing.spawn import run_on_ranks

FLAVORS = ("grok1-tiny", "llama-tiny", "mixtral-tiny")
SETUPS = (("fp32", False, None), ("fp32", False, "full"), ("bf16", False, None), ("bf16", True, "full"))
MBS, SEQ = 2, 32


def _fmt(v) -> str:
    return str(v) if isinstance(v, list) else f"{v:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layouts", default=",".join(s.name for s in LAYOUTS))
    ap.add_argument("--out", default="docs/bench/planner_vs_measured.json")
    args = ap.parse_args()
    wanted = args.layouts.split(",")
    cases = [Case(f, d, o, r) for f in FLAVORS for d, o, r in SETUPS]
    rows, seconds = [], {}
    for spec in LAYOUTS:
        if spec.name not in wanted:
            continue
        start = time.perf_counter()
        results = run_on_ranks(spec.world, measure_cases, args=(spec, cases, MBS, SEQ), timeout=600)
        seconds[spec.name] = round(time.perf_counter() - start, 1)
        for i, case in enumerate(cases):
            rows.extend(compare(spec, case, [r[i] for r in results], MBS, SEQ))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"micro_batch_size": MBS, "seq_length": SEQ, "seconds": seconds,
                                          "rows": rows}, indent=1))
    print("| layout | flavor | setup | stage | component | predicted | measured | error % |")
    print("|---|---|---|---|---|---:|---:|---:|")
    for r in rows:
        err = "n/a" if r["error_pct"] is None else f"{r['error_pct']:+.2f}"
        setup = f"{r['dtype']}{' distopt' if r['distopt'] else ''} recompute={r['recompute']}"
        print(f"| {r['layout']} | {r['flavor']} | {setup} | {r['stage']} | {r['component']} | "
              f"{_fmt(r['predicted'])} | {_fmt(r['measured'])} | {err} |")


if __name__ == "__main__":
    main()
