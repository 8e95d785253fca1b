#!/usr/bin/env python
"""``make demo``: corpus -> tokenizer -> preprocessed data -> 3D-parallel MoE training -> resume.

On a fresh clone, on CPU (8 gloo ranks, one thread each), in about five minutes:
  1. build a demo corpus of real text (Python's own docs) and train a 512-piece SentencePiece model;
  2. preprocess it with tools/preprocess_data.py (Megatron's .bin/.idx);
  3. train a tiny Grok-1-style MoE with TP2 x PP2 x DP2, EP2, sequence parallel and the distributed
     optimizer through examples/tiny/pretrain_grok1_tiny.sh (torchrun), saving a checkpoint;
  4. resume from that checkpoint for a few more iterations (a second torchrun with --load);
  5. fine-tune it (full-parameter SFT) on a small instruction set the demo writes itself, packed,
     through examples/tiny/tune_grok1_tiny.sh (moetrain.finetune.sft, --finetune from step 3's checkpoint);
  6. generate: continue a prompt with the pretrained model, and answer one instruction with the SFT
     model, through examples/tiny/generate_grok1_tiny.sh (2 ranks, TP2: re-sharded on load);
  7. print first vs last loss and a throughput summary.
Everything goes under demo_out/ (gitignored).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "demo_out"
RECIPE = REPO / "examples" / "tiny" / "pretrain_grok1_tiny.sh"
SFT_RECIPE = REPO / "examples" / "tiny" / "tune_grok1_tiny.sh"
GENERATE_RECIPE = REPO / "examples" / "tiny" / "generate_grok1_tiny.sh"
INSTRUCTION = "What is two plus three?"
TRAIN_ITERS, RESUME_ITERS, SFT_ITERS = 150, 20, 100  # SFT: 100 steps make the answer take the trained form


def _step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def prepare_data() -> tuple[Path, Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from moetrain.data.demo_corpus import build_demo_corpus, train_sentencepiece
    _step("demo corpus and SentencePiece tokenizer")
    corpus = build_demo_corpus(OUT / "corpus")
    tokenizer = train_sentencepiece(corpus, OUT / "tokenizer", vocab_size=512)
    print(f"corpus {corpus} ({corpus.stat().st_size / 1e6:.1f} MB), tokenizer {tokenizer}")
    _step("preprocess (tools/preprocess_data.py)")
    prefix = OUT / "data" / "demo"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(corpus),
                    "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", str(tokenizer),
                    "--output-prefix", str(prefix), "--append-eod", "--workers", "2", "--no-progress"], check=True)
    return Path(str(prefix) + "_text_document"), tokenizer


def instruction_data(tokenizer: Path) -> Path:
    """A small instruction set (sums written out in words) in alpaca form, preprocessed and packed."""
    import random

    words = "zero one two three four five six seven eight nine ten".split()
    rng = random.Random(0)
    records = []
    for _ in range(256):
        a, b = rng.randrange(6), rng.randrange(5)
        records.append({"instruction": f"What is {words[a]} plus {words[b]}?", "input": "",
                        "output": f"{words[a].capitalize()} plus {words[b]} is {words[a + b]}."})
    raw = OUT / "sft_data" / "sums.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(records))
    prefix = OUT / "sft_data" / "demo_sft"
    subprocess.run([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(raw),
                    "--handler-name", "AlpacaStyleInstructionHandler", "--prompt-type", "chatml",
                    "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", str(tokenizer),
                    "--output-prefix", str(prefix), "--seq-length", "128", "--pack", "--no-progress"], check=True)
    return prefix


def train(data: Path, tokenizer: Path, log_dir: Path, *extra: str, recipe: Path = RECIPE,
          load: Path | None = None, save: Path | None = None) -> list[dict]:
    env = {**os.environ, "PYTHON": sys.executable, "DATA_PATH": str(data), "TOKENIZER_MODEL": str(tokenizer),
           "CKPT_SAVE_DIR": str(save or OUT / "ckpt"), "CKPT_LOAD_DIR": str(load or OUT / "ckpt"),
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    shutil.rmtree(log_dir, ignore_errors=True)
    subprocess.run(["bash", str(recipe), "--log-dir", str(log_dir), "--no-tensorboard", *extra],
                   check=True, env=env, cwd=REPO)
    return [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]


def generate(load: Path, tokenizer: Path, *extra: str) -> dict:
    """One prompt through the generate recipe; its result record."""
    out = OUT / "generate" / f"{load.name}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHON": sys.executable, "CKPT_LOAD_DIR": str(load), "TOKENIZER_MODEL": str(tokenizer),
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    subprocess.run(["bash", str(GENERATE_RECIPE), "--output-file", str(out), *extra], check=True, env=env, cwd=REPO)
    return json.loads(out.read_text().splitlines()[0])


def main() -> int:
    start = time.monotonic()
    data, tokenizer = prepare_data()
    shutil.rmtree(OUT / "ckpt", ignore_errors=True)
    _step(f"train grok1-tiny on 8 CPU ranks (TP2 x PP2 x DP2, EP2, SP), {TRAIN_ITERS} iterations")
    first = train(data, tokenizer, OUT / "logs" / "train", "--train-iters", str(TRAIN_ITERS),
                  "--save-interval", str(TRAIN_ITERS), "--log-interval", "5")
    total = TRAIN_ITERS + RESUME_ITERS
    _step(f"resume from {OUT / 'ckpt'} (iteration {TRAIN_ITERS}) to iteration {total}")
    resumed = train(data, tokenizer, OUT / "logs" / "resume", "--train-iters", str(total), "--log-interval", "5")
    _step(f"fine-tune (SFT, packed instruction data) from {OUT / 'ckpt'}, {SFT_ITERS} iterations")
    sft_data = instruction_data(tokenizer)
    shutil.rmtree(OUT / "ckpt_sft", ignore_errors=True)
    tuned = train(sft_data, tokenizer, OUT / "logs" / "sft", "--train-iters", str(SFT_ITERS),
                  "--save-interval", str(SFT_ITERS), "--eval-interval", str(SFT_ITERS // 2),
                  recipe=SFT_RECIPE, load=OUT / "ckpt", save=OUT / "ckpt_sft")
    _step("generate from the pretrained model (greedy) and ask the SFT model one instruction (chatml)")
    story = generate(OUT / "ckpt", tokenizer)
    answer = generate(OUT / "ckpt_sft", tokenizer, "--prompt-type", "chatml", "--prompt", INSTRUCTION)
    losses = [m["lm_loss"] for m in first if m["lm_loss"] is not None]
    final = resumed[-1]["lm_loss"]
    steady = [m for m in first + resumed if m["iteration"] > 5]  # skip start-up iterations
    _step("summary")
    print(f"lm loss: first {losses[0]:.3f} -> last {losses[-1]:.3f} (after resume, iteration {total}: {final:.3f})")
    print(f"step time {statistics.median(m['step_time_s'] for m in steady):.3f} s | tokens/s/p "
          f"{statistics.median(m['tokens_per_sec_per_device'] for m in steady):.1f} | TFLOPS/device "
          f"{statistics.median(m['tflops_per_device'] for m in steady):.4f} (8 CPU ranks on shared cores)")
    print(f"SFT lm loss (trained tokens only): first {tuned[0]['lm_loss']:.3f} -> last {tuned[-1]['lm_loss']:.3f} | "
          f"padding {tuned[-1]['padding_fraction']:.1%} | trained tokens/s {tuned[-1]['trained_tokens_per_sec']:.0f}")
    print(f"pretrained model, greedy: {story['prompt']!r} -> {story['output']!r} (150 steps of a tiny model: "
          "expect repetition)")
    print(f"SFT model: {INSTRUCTION!r} -> {answer['output']!r} ({answer['finish_reason']})")
    print(f"logs: {OUT / 'logs'} (metrics.jsonl, run_info.json); report: "
          f"python tools/benchmark.py --log-dir {OUT / 'logs' / 'train'}")
    print(f"demo wall time {time.monotonic() - start:.0f} s")
    if not final < losses[0] - 1.0:
        print("demo: the loss did not fall as expected", file=sys.stderr)
        return 1
    if not tuned[-1]["lm_loss"] < tuned[0]["lm_loss"] - 0.5:
        print("demo: the SFT loss did not fall as expected", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
