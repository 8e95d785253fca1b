#!/usr/bin/env python
"""CPU generation benchmark: moetrain's generation loop vs Hugging Face ``generate`` (KV cache), same weights.

One dense (Llama) and one MoE (Mixtral, 8 experts top-2) model of the same shape (hidden 256, FFN 512,
4 layers, 8 heads, 4 KV heads, vocab 2048, seq_length 512, fp32, random weights), and a wider dense one
(hidden 1024, FFN 4096, 16 heads, vocab 32000; batch 1 only), are each written as a Hugging Face directory; HF runs the in-memory model (its default attention and experts kernels),
moetrain loads the directory through ``moetrain.inference.loading`` (1 rank, gloo). Prompts of 64
random tokens, batch 1 and 4, 64 new tokens, greedy, ``torch.set_num_threads(2)``, one process.

Both sides are measured the same way, by wall time around the whole call: time to first token
(TTFT) is ``generate(max_new_tokens=1)``, and decode tokens/s is ``batch * (N - 1) / (time(N) -
time(1))`` with N = 64 (summed over the batch's rows). One warm-up per side and case, then
``--reps`` repetitions alternating moetrain / HF; medians are reported, with moetrain / HF ratios.
moetrain's own ``Generator.times`` (prefill and per-step decode time inside the loop) is kept in
the JSON too. The greedy tokens of both must be equal; where they differ the first differing step
and HF's top-1 / top-2 logit margin there are printed (a near-tie is not a bug); the exit status is
1 only if they differ where HF's choice was not a near-tie.

    .venv/bin/python tools/bench_generate.py [--reps 7] [--threads 2]

Writes docs/bench/generate.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPE = dict(num_layers=4, hidden_size=256, ffn_hidden_size=512, num_attention_heads=8, num_query_groups=4,
             vocab_size=2048, seq_length=512)
# name: (flavor, changes to SHAPE, batches). "dense-wide" shows where per-layer Python overhead stops
# mattering: the same depth with 4x the width and a 32k vocabulary.
MODELS = {"dense": ("llama-tiny", {}, (1, 4)),
          "moe": ("mixtral-tiny", dict(num_experts=8, moe_router_topk=2), (1, 4)),
          "dense-wide": ("llama-tiny", dict(hidden_size=1024, ffn_hidden_size=4096, num_attention_heads=16,
                                            vocab_size=32000), (1,))}
PROMPT_LEN, NEW_TOKENS = 64, 64
MIN_MARGIN = 1e-3  # a top-1 / top-2 logit gap below this is a near-tie (fp32 differences are ~1e-6)


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} x {model} ({platform.machine()}), {gib:.0f} GiB, run on the CPU"


def write_hf(cfg, path: Path):
    """Seeded normal weights with a trained model's logit spread (as tests/test_generate.py: norms
    near 1, a wide output layer), so greedy steps do not near-tie; saved to ``path``."""
    from transformers import AutoModelForCausalLM

    from moetrain.models.hf_config import to_hf_config

    model = AutoModelForCausalLM.from_config(to_hf_config(cfg))
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if "norm" in name else noise * (1.0 if "lm_head" in name else 0.1))
    model = model.float().eval()
    model.generation_config.eos_token_id = None  # always N new tokens, as moetrain without a stop rule
    model.save_pretrained(path)
    return model


def moetrain_generator(path: Path):
    """A 1-rank Generator over the HF directory, built as tests/generate_ranks.py builds it."""
    from moetrain.device import get_backend
    from moetrain.inference.generator import Generator
    from moetrain.inference.loading import inspect_checkpoint, load_model
    from moetrain.parallel import ParallelDims
    from moetrain.training.trainer import seed_everything

    info = inspect_checkpoint(path)
    cfg = info.model_cfg
    dims = ParallelDims(world_size=1, tp=1, pp=1, ep=1)
    dims.validate_model(cfg, training=False)
    dims.initialize()
    seed_everything(1)
    model, _ = load_model(info, dims, "fp32", get_backend().batch_p2p_comm)
    return Generator(model, cfg.vocab_size, cfg.seq_length)


def run_moetrain(gen, prompts: list[list[int]], n: int):
    """(wall seconds, tokens per row, the loop's own StepTimes)."""
    from moetrain.inference.generator import StepTimes
    from moetrain.inference.sampling import SamplingParams

    gen.times = StepTimes()
    start = time.perf_counter()
    out = gen.generate(prompts, n, SamplingParams(greedy=True))
    return time.perf_counter() - start, [g.output_ids for g in out], gen.times


def run_hf(model, ids: torch.Tensor, n: int, scores: bool = False):
    """(wall seconds, tokens per row, per-step logits if ``scores``)."""
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         pad_token_id=0, eos_token_id=None, output_scores=scores, return_dict_in_generate=True)
    seconds = time.perf_counter() - start
    return seconds, out.sequences[:, ids.shape[1]:].tolist(), out.scores if scores else None


def compare(mt_tokens, hf_tokens, hf_scores) -> dict:
    """Equal greedy tokens, or the first differing (row, step) and HF's top-2 margin there."""
    for row, (a, b) in enumerate(zip(mt_tokens, hf_tokens)):
        if a != b:
            step = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            margin = None
            if step < len(hf_scores):
                top2 = hf_scores[step][row].topk(2).values
                margin = float(top2[0] - top2[1])
            return {"equal": False, "row": row, "step": step, "hf_top2_margin": margin,
                    "moetrain": a[step:step + 4], "hf": b[step:step + 4]}
    return {"equal": True}


def bench_case(gen, model, prompts: list[list[int]], reps: int) -> dict:
    b, ids = len(prompts), torch.tensor(prompts)
    # Warm-up (both lengths, each side); its tokens are the ones compared.
    run_moetrain(gen, prompts, 1)
    _, mt_tokens, _ = run_moetrain(gen, prompts, NEW_TOKENS)
    run_hf(model, ids, 1)
    _, hf_tokens, hf_scores = run_hf(model, ids, NEW_TOKENS, scores=True)
    check = compare(mt_tokens, hf_tokens, hf_scores)
    t = {k: [] for k in ("mt_1", "mt_n", "hf_1", "hf_n", "mt_loop_prefill", "mt_loop_decode")}
    for _ in range(reps):  # alternating: load on the machine hits both alike
        t["mt_1"].append(run_moetrain(gen, prompts, 1)[0])
        seconds, _, times = run_moetrain(gen, prompts, NEW_TOKENS)
        t["mt_n"].append(seconds)
        t["mt_loop_prefill"].append(times.prefill)
        t["mt_loop_decode"].append(sum(times.decode))
        t["hf_1"].append(run_hf(model, ids, 1)[0])
        t["hf_n"].append(run_hf(model, ids, NEW_TOKENS)[0])
    med = {k: statistics.median(v) for k, v in t.items()}
    decoded = b * (NEW_TOKENS - 1)
    # Decode time per repetition (time(N) - time(1) of the same repetition), then the median.
    mt_decode = statistics.median(n - one for n, one in zip(t["mt_n"], t["mt_1"]))
    hf_decode = statistics.median(n - one for n, one in zip(t["hf_n"], t["hf_1"]))
    mt_tps, hf_tps = decoded / mt_decode, decoded / hf_decode
    return {
        "batch": b, "prompt_len": PROMPT_LEN, "new_tokens": NEW_TOKENS, "tokens": check,
        "moetrain_ttft_s": round(med["mt_1"], 5), "hf_ttft_s": round(med["hf_1"], 5),
        "ttft_ratio_moetrain_over_hf": round(med["mt_1"] / med["hf_1"], 3),
        "moetrain_decode_tokens_per_s": round(mt_tps, 1), "hf_decode_tokens_per_s": round(hf_tps, 1),
        "decode_ratio_moetrain_over_hf": round(mt_tps / hf_tps, 3),
        # moetrain's own StepTimes: the steps only, without the set-up before the first one.
        "moetrain_loop_ttft_s": round(med["mt_loop_prefill"], 5),
        "moetrain_loop_decode_tokens_per_s": round(decoded / med["mt_loop_decode"], 1),
        "seconds": {k: [round(x, 5) for x in v] for k, v in t.items()},
    }


def init_single_process() -> None:
    from moetrain.device import setup_device

    setup_device("cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "generate.json")
    args = parser.parse_args()

    import transformers

    from moetrain.models import get_flavor

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]  # other work on the machine disturbs both sides (see the docs)
    init_single_process()
    g = torch.Generator().manual_seed(3)
    cases, kernels = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        for kind, (flavor, extra, batches) in MODELS.items():
            cfg = get_flavor(flavor, **{**SHAPE, **extra})
            model = write_hf(cfg, Path(tmp) / kind)
            kernels[kind] = {"attention": model.config._attn_implementation,
                             "experts": getattr(model.config, "_experts_implementation", None)}
            gen = moetrain_generator(Path(tmp) / kind)
            for b in batches:
                prompts = torch.randint(1, cfg.vocab_size, (b, PROMPT_LEN), generator=g).tolist()
                print(f"[bench_generate] {kind} batch {b} ...", flush=True)
                cases.append({"model": kind, **bench_case(gen, model, prompts, args.reps)})
    torch.distributed.destroy_process_group()

    result = {
        "date": datetime.date.today().isoformat(), "machine": machine(), "torch": torch.__version__,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "transformers": transformers.__version__, "threads": args.threads, "processes": 1, "reps": args.reps,
        "shape": {**SHAPE, "dtype": "fp32", "changes": {k: v[1] for k, v in MODELS.items()}}, "hf_kernels": kernels,
        "measured": "wall time of the whole generate call on both sides: TTFT = generate(1 new token); "
                    "decode tokens/s = batch * (N-1) / (time(N) - time(1)), N = 64; medians over reps",
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{result['machine']}; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{args.threads} threads; medians of {args.reps}; wall time of each generate call (both sides); "
          f"1-min load average {result['load_average_1min'][0]} before, {result['load_average_1min'][1]} after\n")
    print("| model | batch | TTFT moetrain s | TTFT HF s | TTFT moetrain / HF | decode tok/s moetrain | "
          "decode tok/s HF | decode tok/s moetrain / HF | greedy tokens equal |")
    print("|---|---|---|---|---|---|---|---|---|")
    bad = False
    for c in cases:
        tok = c["tokens"]
        if tok["equal"]:
            same = "yes"
        else:
            margin = tok["hf_top2_margin"]
            same = f"no: row {tok['row']} step {tok['step']}, HF top-2 margin {margin}"
            bad |= margin is None or margin > MIN_MARGIN  # a real difference, not a near-tie
        print(f"| {c['model']} | {c['batch']} | {c['moetrain_ttft_s']:.4f} | {c['hf_ttft_s']:.4f} | "
              f"{c['ttft_ratio_moetrain_over_hf']:.2f} | {c['moetrain_decode_tokens_per_s']:.0f} | "
              f"{c['hf_decode_tokens_per_s']:.0f} | {c['decode_ratio_moetrain_over_hf']:.2f} | {same} |")
    print(f"\nwrote {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
