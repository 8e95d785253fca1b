#!/usr/bin/env python
"""Benchmark of ckpt_converters/convert_ckpt.py: a synthetic ~2 GB bf16 Llama-2-7B-shaped checkpoint
(4 layers instead of 32: every tensor has its real size) converted HF -> Megatron (TP2 x PP2) -> HF.

Each conversion runs as a subprocess; wall time, GB/s (bytes written / wall) and peak RSS
(``os.wait4``'s ru_maxrss of that child) are reported, with peak RSS as a multiple of the largest
tensor. Checkpoints are written under a temporary directory (``--work-dir``, default the system's
temp dir) and deleted. Results: docs/bench/convert.json and the "Checkpoint conversion" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moetrain.models import get_flavor  # noqa: E402
from moetrain.models.hf_config import to_hf_config  # noqa: E402
from moetrain.models.weight_maps import expected_hf_keys  # noqa: E402

SECTION = "## Checkpoint conversion"


def write_synthetic_hf(cfg, out: Path, shard_bytes: int) -> tuple[int, int]:
    """Random bf16 weights, sharded and indexed as save_pretrained writes them. Returns (bytes, largest)."""
    out.mkdir(parents=True)
    to_hf_config(cfg).save_pretrained(out)
    keys = list(expected_hf_keys(cfg).items())
    shards, cur, size = [], {}, 0
    for name, shape in keys:
        n = torch.Size(shape).numel() * 2
        if cur and size + n > shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[name] = shape
        size += n
    shards.append(cur)
    g = torch.Generator().manual_seed(0)
    weight_map, total, largest = {}, 0, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {k: torch.randn(s, generator=g, dtype=torch.float32).to(torch.bfloat16) for k, s in shard.items()}
        save_file(tensors, out / fname, metadata={"format": "pt"})
        for k, t in tensors.items():
            weight_map[k] = fname
            total += t.numel() * 2
            largest = max(largest, t.numel() * 2)
        del tensors
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
    return total, largest


def run_converter(args: list[str]) -> dict:
    cmd = [sys.executable, str(ROOT / "ckpt_converters" / "convert_ckpt.py"), "--no-progress", *args]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    wall = time.monotonic() - start
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"converter failed: {' '.join(cmd)}\n{err}")
    written = float(re.search(r"wrote \d+ tensors \(([\d.]+) GB\)", out).group(1))
    return {"wall_s": round(wall, 2), "gb_written": written, "gb_per_s": round(written / wall, 3),
            "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 3), "report": out.strip()}


def same_tensors(a: Path, b: Path) -> bool:
    index = json.loads((a / "model.safetensors.index.json").read_text())["weight_map"]
    other = json.loads((b / "model.safetensors.index.json").read_text())["weight_map"]
    if set(index) != set(other):
        return False
    for name in index:
        with safe_open(str(a / index[name]), "pt") as fa, safe_open(str(b / other[name]), "pt") as fb:
            if not torch.equal(fa.get_tensor(name), fb.get_tensor(name)):
                return False
    return True


def update_markdown(path: Path, body: str) -> None:
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    section = f"{SECTION}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--out-json", default=str(ROOT / "docs" / "bench" / "convert.json"))
    ap.add_argument("--markdown", default=str(ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args()
    cfg = get_flavor("llama2-7b", num_layers=args.layers)
    work = Path(tempfile.mkdtemp(prefix="bench_convert_", dir=args.work_dir))
    try:
        t0 = time.monotonic()
        total, largest = write_synthetic_hf(cfg, work / "hf", shard_bytes=1_000_000_000)
        gen_s = time.monotonic() - t0
        common = ["--model-type-hf", "llama2", "--max-shard-size", "1GB"]
        to_mg = run_converter([*common, "--load-model-type", "hf", "--save-model-type", "mg", "--load-dir",
                               str(work / "hf"), "--save-dir", str(work / "mg"), "--target-tensor-parallel-size", "2",
                               "--target-pipeline-parallel-size", "2"])
        to_hf = run_converter([*common, "--load-model-type", "mg", "--save-model-type", "hf", "--load-dir",
                               str(work / "mg"), "--save-dir", str(work / "hf2")])
        exact = same_tensors(work / "hf", work / "hf2")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for r in (to_mg, to_hf):
        r["peak_rss_x_largest_tensor"] = round(r["peak_rss_gb"] * 1e9 / largest, 2)
    result = {"model": f"llama2-7b shape, {args.layers} layers, bf16", "checkpoint_gb": round(total / 1e9, 3),
              "largest_tensor_gb": round(largest / 1e9, 3), "generate_s": round(gen_s, 1),
              "hf_to_mg_tp2_pp2": to_mg, "mg_to_hf": to_hf, "round_trip_bit_exact": exact,
              "cpu_count": os.cpu_count(), "torch": torch.__version__}
    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out_json).write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(f"| {name} | {r['wall_s']} | {r['gb_written']} | {r['gb_per_s']} | {r['peak_rss_gb']} | "
                     f"{r['peak_rss_x_largest_tensor']} |" for name, r in (("HF -> mg (TP2 PP2)", to_mg),
                                                                           ("mg -> HF", to_hf)))
    update_markdown(Path(args.markdown), f"""
`make bench` (tools/bench_convert.py): a synthetic {result['checkpoint_gb']} GB bf16 checkpoint
(Llama-2-7B tensor shapes, {args.layers} layers; largest tensor {result['largest_tensor_gb']} GB, the embedding),
sharded as save_pretrained writes it, converted by `ckpt_converters/convert_ckpt.py` as a subprocess
on {result['cpu_count']} CPU cores. Round trip bit-exact: {exact}. Raw numbers: docs/bench/convert.json.

| direction | wall s | GB written | GB/s | peak RSS GB | peak RSS / largest tensor |
|---|---|---|---|---|---|
{rows}

hf -> mg holds one target rank's state dict at a time (here a quarter of the model); mg -> hf streams
tensor by tensor into safetensors shards whose headers are planned up front.
""")
    print(json.dumps(result, indent=2))
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
