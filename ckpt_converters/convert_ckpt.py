#!/usr/bin/env python
"""Hugging Face <-> Megatron checkpoint conversion for Grok-1, Llama and Mixtral (ModelLink's flags).

    python ckpt_converters/convert_ckpt.py --model-type-hf grok1 --load-model-type hf --save-model-type mg \
        --load-dir ./grok1-hf --save-dir ./grok1-mg --target-tensor-parallel-size 4 \
        --target-pipeline-parallel-size 2 --target-expert-parallel-size 2

mg -> hf writes sharded safetensors + config.json; mg -> mg re-shards to the target layout.
--lora-load DIR merges a LoRA adapter into the weights written; with --save-lora-to-hf the adapter
is written alone as a Hugging Face PEFT adapter.
See docs/convert.md. Errors are one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from moetrain.checkpoint_formats.errors import ConversionError  # noqa: E402
from moetrain.checkpoint_formats.options import DTYPES, MODEL_TYPES, ConvertOptions  # noqa: E402


def _layer_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer counts like 3,5, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="convert_ckpt.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-type-hf", required=True, choices=MODEL_TYPES)
    p.add_argument("--load-model-type", required=True, choices=("hf", "mg"))
    p.add_argument("--save-model-type", required=True, choices=("hf", "mg"))
    p.add_argument("--load-dir", required=True, type=Path)
    p.add_argument("--save-dir", required=True, type=Path)
    p.add_argument("--target-tensor-parallel-size", type=int, default=1)
    p.add_argument("--target-pipeline-parallel-size", type=int, default=1)
    p.add_argument("--target-expert-parallel-size", type=int, default=1)
    p.add_argument("--num-layer-list", type=_layer_list, default=None, help="layers per pipeline stage, e.g. 3,5")
    p.add_argument("--params-dtype", choices=tuple(DTYPES), default=None,
                   help="cast weights to this dtype (default: keep the source dtype)")
    p.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    p.add_argument("--model", default=None, help="take the architecture from this moetrain flavor "
                   "instead of config.json / the checkpoint's metadata")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --save-dir")
    opt = p.add_mutually_exclusive_group()
    opt.add_argument("--keep-optimizer", dest="keep_optimizer", action="store_true", default=None)
    opt.add_argument("--drop-optimizer", dest="keep_optimizer", action="store_false")
    p.add_argument("--max-shard-size", default="2GB", help="HF output shard size (default 2GB)")
    p.add_argument("--tokenizer-dir", type=Path, default=None, help="copy tokenizer files from here (hf output)")
    p.add_argument("--iteration", type=int, default=1, help="iteration number of a written Megatron checkpoint")
    p.add_argument("--lora-load", type=Path, default=None,
                   help="a LoRA adapter checkpoint (a LoRA run's --save) trained on --load-dir: merged into the "
                   "weights written, W + alpha/r B A in fp32")
    p.add_argument("--save-lora-to-hf", action="store_true",
                   help="write the --lora-load adapter alone as a Hugging Face PEFT adapter "
                   "(adapter_config.json + adapter_model.safetensors) instead of merged weights")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from moetrain.checkpoint_formats.convert import convert

        opts = ConvertOptions(
            model_type_hf=args.model_type_hf, load_model_type=args.load_model_type,
            save_model_type=args.save_model_type, load_dir=args.load_dir, save_dir=args.save_dir,
            tp=args.target_tensor_parallel_size, pp=args.target_pipeline_parallel_size,
            ep=args.target_expert_parallel_size, num_layer_list=args.num_layer_list, params_dtype=args.params_dtype,
            make_vocab_size_divisible_by=args.make_vocab_size_divisible_by, model=args.model,
            overwrite=args.overwrite, keep_optimizer=args.keep_optimizer, max_shard_size=args.max_shard_size,
            tokenizer_dir=args.tokenizer_dir, iteration=args.iteration, progress=not args.no_progress,
            lora_load=args.lora_load, save_lora_to_hf=args.save_lora_to_hf)
        report = convert(opts)
    except (ConversionError, ValueError, OSError) as e:
        # Input problems are one line; a genuine bug (any other exception) keeps its traceback.
        print(f"convert_ckpt.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convert_ckpt.py: interrupted; nothing was written to --save-dir", file=sys.stderr)
        return 130
    print(report.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
