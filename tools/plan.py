#!/usr/bin/env python
"""Plan a TP/PP/EP layout: parameters and memory per rank, bubble, FLOPs and predicted tokens/s/p.

    python tools/plan.py --model grok1-40b --tp 4 --pp 2 --ep 2 --nnodes 2 --nproc-per-node 8 \
        --gbs 128 --mbs 1 --seq 8192 --device-memory 64GB --device 910b2 --assumed-mfu 0.4 \
        --use-distributed-optimizer --sequence-parallel --bf16 --json plan.json

LoRA fine-tuning (MindSpeed's flags): ``--lora-r 16`` and/or ``--lora-target-modules linear_qkv
linear_proj linear_fc1 linear_fc2 [router]`` (default the four linears): the base is frozen (weights
only), the fp32 adapters carry gradients and Adam state.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moetrain.device.peak_flops import known_devices  # noqa: E402
from moetrain.models.param_count import LORA_DEFAULT_TARGETS, LORA_TARGETS  # noqa: E402
from moetrain.models.registry import get_flavor, list_flavors  # noqa: E402
from moetrain.planner import Layout, Setup, format_plan, plan_to_dict, plan_with_suggestions  # noqa: E402
from moetrain.planner.memory import LoraSetup  # noqa: E402
from moetrain.planner.plan import device_memory_default  # noqa: E402


def parse_memory_gib(text: str) -> float:
    """'64GB', '64GiB', '64G' or '64' -> GiB. Device memory is quoted in binary units by vendors
    ("80GB" H100 = 80 GiB of HBM), so GB and GiB are read alike."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*(g|gb|gib)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"--device-memory {text!r}: expected e.g. 64GB")
    return float(m.group(1))


def parse_layer_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--num-layer-list {text!r}: expected e.g. 5,3") from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=f"flavor: {', '.join(list_flavors())}")
    # Short names, plus the trainer's Megatron names so a launch's flags can be pasted as they are.
    p.add_argument("--tp", "--tensor-model-parallel-size", dest="tp", type=int, default=1)
    p.add_argument("--pp", "--pipeline-model-parallel-size", dest="pp", type=int, default=1)
    p.add_argument("--ep", "--expert-model-parallel-size", dest="ep", type=int, default=1)
    p.add_argument("--etp", "--expert-tensor-parallel-size", dest="etp", type=int, default=None,
                   help="expert tensor-parallel size (default: the trainer's on NPU / GPU, = --tp)")
    p.add_argument("--vpp", type=int, default=None, help="virtual pipeline stages per rank")
    p.add_argument("--num-layer-list", type=parse_layer_list, default=None, help="layers per stage, e.g. 5,3")
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--nproc-per-node", type=int, default=8)
    p.add_argument("--gbs", "--global-batch-size", dest="gbs", type=int, required=True, help="global batch size (sequences)")
    p.add_argument("--mbs", "--micro-batch-size", dest="mbs", type=int, default=1, help="micro batch size")
    p.add_argument("--seq", "--seq-length", dest="seq", type=int, default=None, help="sequence length (default: the flavor's)")
    p.add_argument("--device", default=None, help=f"device for the peak FLOPS: {', '.join(known_devices())}")
    p.add_argument("--device-memory", type=parse_memory_gib, default=None,
                   help="memory per device, e.g. 64GB (default: the device's)")
    p.add_argument("--reserved-memory", type=parse_memory_gib, default="2GB",
                   help="per-rank memory outside the model (runtime context, comm buffers); default 2GB")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device's dense peak")
    p.add_argument("--assumed-mfu", type=float, default=0.4)
    p.add_argument("--use-distributed-optimizer", action="store_true")
    p.add_argument("--recompute-granularity", choices=["full", "selective"], default=None)
    p.add_argument("--sequence-parallel", action="store_true")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (otherwise fp32)")
    p.add_argument("--no-flash-attention", action="store_true",
                   help="unfused attention that stores the s x s softmax")
    p.add_argument("--lora-r", type=int, default=None,
                   help="plan a LoRA fine-tune with adapters of this rank (default 16 when only "
                        "--lora-target-modules is given)")
    p.add_argument("--lora-target-modules", nargs="+", default=None, choices=LORA_TARGETS, metavar="MODULE",
                   help=f"LoRA targets: {' '.join(LORA_TARGETS)} (router: the router weights train); "
                        f"default {' '.join(LORA_DEFAULT_TARGETS)}")
    p.add_argument("--json", default=None, help="also write the plan as JSON here")
    return p


def lora_setup(args: argparse.Namespace) -> LoraSetup | None:
    """LoRA is planned when either LoRA flag is given (as the trainer turns it on by its targets)."""
    if args.lora_r is None and args.lora_target_modules is None:
        return None
    return LoraSetup(r=16 if args.lora_r is None else args.lora_r,
                     targets=tuple(args.lora_target_modules or LORA_DEFAULT_TARGETS))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = get_flavor(args.model)
        layout = Layout(
            world_size=args.nnodes * args.nproc_per_node, tp=args.tp, pp=args.pp, ep=args.ep, expert_tp=args.etp,
            vpp=args.vpp, num_layer_list=args.num_layer_list, sequence_parallel=args.sequence_parallel,
            use_distributed_optimizer=args.use_distributed_optimizer,
            recompute_granularity=args.recompute_granularity,
        )
        setup = Setup(args.gbs, args.mbs, args.seq or cfg.seq_length, bf16=args.bf16,
                      flash_attention=not args.no_flash_attention, lora=lora_setup(args))
        memory = args.device_memory if args.device_memory is not None else device_memory_default(args.device)
        plan = plan_with_suggestions(
            cfg, layout, setup, device=args.device, device_memory_gib=memory, assumed_mfu=args.assumed_mfu,
            peak_tflops=args.peak_tflops, reserved_gib=args.reserved_memory, max_tp=args.nproc_per_node,
        )
    except ValueError as exc:
        print(f"plan.py: error: {exc}", file=sys.stderr)
        return 2
    print(format_plan(plan))
    if args.json:
        Path(args.json).write_text(json.dumps(plan_to_dict(plan), indent=2) + "\n")
    return 0 if plan.fits else 1


if __name__ == "__main__":
    sys.exit(main())
