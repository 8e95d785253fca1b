"""Training throughput benchmark: the tiny Grok-1 recipe (TP2 PP2 EP2 + SP on 8 ranks) on the demo
data, then its report (JSON, Markdown, PNG) in the users' table format.

    python tools/bench_train.py [--iters 30]

Prepares the demo corpus / tokenizer / indexed dataset if needed (as `make demo` does), runs
examples/tiny/pretrain_grok1_tiny.sh through tools/benchmark.py --run, and writes the report to
docs/bench/grok1_tiny/. On a GPU or NPU host the same command measures that device.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _demo_module():
    spec = importlib.util.spec_from_file_location("moetrain_demo", ROOT / "tools" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "bench" / "grok1_tiny")
    args = parser.parse_args()
    data, tokenizer = _demo_module().prepare_data()
    with tempfile.TemporaryDirectory(prefix="moetrain_bench_train_") as tmp:
        env = {**os.environ, "PYTHON": sys.executable, "DATA_PATH": str(data), "TOKENIZER_MODEL": str(tokenizer),
               "CKPT_SAVE_DIR": str(Path(tmp) / "ckpt"), "CKPT_LOAD_DIR": str(Path(tmp) / "none"),
               "PYTHONWARNINGS": "ignore"}
        recipe = (f"bash examples/tiny/pretrain_grok1_tiny.sh --train-iters {args.iters} --save-interval "
                  f"{args.iters * 10} --eval-iters 0 --log-interval 1 --no-tensorboard")
        # No --reference here: the published NPU / GPU figures are for grok1-40b on 16 devices.
        return subprocess.call([sys.executable, "tools/benchmark.py", "--run", recipe, "--log-dir",
                                str(Path(tmp) / "logs"), "--warmup", "3", "--out-dir", str(args.out_dir)],
                               cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
