#!/usr/bin/env python
"""Benchmark report from a training log dir (run_info.json + metrics.jsonl), optionally running a recipe first.

    python tools/benchmark.py --log-dir logs/grok1_40b --warmup 2 --out-dir reports/grok1_40b \
        --reference "NPU:1646.6,GPU:2057"
    python tools/benchmark.py --run "bash examples/tiny/pretrain_grok1_tiny.sh" --log-dir logs/tiny --warmup 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moetrain.training.report import parse_reference, write_report  # noqa: E402

LOG_DIR_ENV = "MOETRAIN_LOG_DIR"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log-dir", required=True, help="the run's log dir (run_info.json, metrics.jsonl)")
    p.add_argument("--out-dir", default=None, help="where report.{json,md,png} go (default: --log-dir)")
    p.add_argument("--warmup", type=int, default=2, help="iterations excluded from the averages")
    p.add_argument("--reference", default=None, help='reference tokens/s/p, e.g. "NPU:1646.6,GPU:2057"')
    p.add_argument("--peak-tflops", type=float, default=None, help="device dense peak for MFU (override)")
    p.add_argument("--run", default=None,
                   help=f"shell command to run first, with {LOG_DIR_ENV} set to --log-dir")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        reference = parse_reference(args.reference)
    except ValueError as exc:
        print(f"benchmark.py: error: {exc}", file=sys.stderr)
        return 2
    if args.run:
        Path(args.log_dir).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, LOG_DIR_ENV: str(Path(args.log_dir).resolve())}
        print(f"benchmark.py: running {args.run!r} with {LOG_DIR_ENV}={env[LOG_DIR_ENV]}", flush=True)
        rc = subprocess.run(args.run, shell=True, env=env).returncode
        if rc:
            print(f"benchmark.py: error: the run command exited with status {rc}", file=sys.stderr)
            return rc
    try:
        paths = write_report(args.log_dir, args.out_dir, args.warmup, reference, args.peak_tflops)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"benchmark.py: error: {exc}", file=sys.stderr)
        return 2
    print(paths["md"].read_text())
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
