"""``tools/preprocess_data.py`` command line, with the flag names Megatron-LM / ModelLink users type."""

from __future__ import annotations

import argparse
import sys
import warnings

with warnings.catch_warnings():
    # megatron.core's package import warns about missing Transformer Engine / Apex: irrelevant here.
    warnings.simplefilter("ignore", UserWarning)
    from moetrain.data.handlers import HANDLERS, PRETRAIN_HANDLER
    from moetrain.data.pipeline import PreprocessConfig, PreprocessError
    from moetrain.data.preprocess import preprocess, summary
    from moetrain.data.readers import InputError
    from moetrain.data.templates import TEMPLATES
    from moetrain.data.tokenizers import HF_TYPES, SENTENCEPIECE_TYPES, TokenizerError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="preprocess_data.py",
        description="Tokenize a corpus into megatron-core indexed datasets ({prefix}_{key}_document.bin/.idx).",
    )
    g = p.add_argument_group("input data")
    g.add_argument("--input", required=True, help="file (.jsonl, .jsonl.gz, .json, .parquet, .txt), directory or glob")
    g.add_argument("--json-keys", nargs="+", default=["text"], help="keys to tokenize (pretraining: one output each)")
    g.add_argument("--handler-name", default=None, choices=sorted(HANDLERS),
                   help=f"record format (default: {PRETRAIN_HANDLER}, or the --dataset-info entry's formatting)")
    g.add_argument("--dataset-info", default=None,
                   help="LLaMA-Factory dataset_info.json: --input then names one of its entries")
    g.add_argument("--split-sentences", action="store_true", help="not supported (needs nltk); kept for a clear error")
    g.add_argument("--keep-newlines", action="store_true", help="accepted for compatibility (only with --split-sentences)")
    g.add_argument("--skip-bad-records", action="store_true", help="count and skip malformed records instead of failing")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", default="PretrainedFromHF", choices=list(HF_TYPES + SENTENCEPIECE_TYPES))
    g.add_argument("--tokenizer-name-or-path", help="local Hugging Face tokenizer directory (read offline)")
    g.add_argument("--tokenizer-model", help="SentencePiece .model file")
    g.add_argument("--append-eod", action="store_true", help="append the EOD token after each document")
    g = p.add_argument_group("instruction data")
    g.add_argument("--prompt-type", default="plain", choices=sorted(TEMPLATES))
    g.add_argument("--seq-length", type=int, default=None, help="maximum sample length; packing row length")
    g.add_argument("--pack", action="store_true", help="pack whole samples in order into rows of --seq-length")
    g.add_argument("--overlong", choices=("truncate", "drop"), default="truncate",
                   help="what to do with samples longer than --seq-length (counted either way)")
    g = p.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True, help="path prefix of the output files")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1, help="tokenizer worker processes (in total)")
    g.add_argument("--partitions", "--n-subs", dest="partitions", type=int, default=1,
                   help="split the input into N shards processed in parallel, then merged in order")
    g.add_argument("--chunk-size", type=int, default=128, help="records per worker task")
    g.add_argument("--log-interval", type=int, default=1000, help="accepted for compatibility (progress is a bar)")
    g.add_argument("--keep-sequential-samples", action="store_true", help="accepted: order is always kept")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)

    try:
        if args.split_sentences:
            raise PreprocessError("--split-sentences is not supported; documents are tokenized whole")
        record_map, handler, data_input = None, args.handler_name or PRETRAIN_HANDLER, args.input
        if args.dataset_info:
            from moetrain.data.llamafactory import resolve

            dataset = resolve(args.dataset_info, args.input)
            data_input, record_map = dataset.input, dataset.record_map
            if args.handler_name and args.handler_name != dataset.handler_name:
                raise PreprocessError(f"--handler-name {args.handler_name} contradicts the {args.dataset_info} "
                                      f"entry {args.input!r} (formatting -> {dataset.handler_name}); drop the flag")
            handler = dataset.handler_name
        cfg = PreprocessConfig(
            input=data_input, output_prefix=args.output_prefix, tokenizer_type=args.tokenizer_type,
            tokenizer_name_or_path=args.tokenizer_name_or_path, tokenizer_model=args.tokenizer_model,
            handler_name=handler, json_keys=args.json_keys, append_eod=args.append_eod,
            prompt_type=args.prompt_type, seq_length=args.seq_length, pack=args.pack, overlong=args.overlong,
            workers=args.workers, partitions=args.partitions, chunk_size=args.chunk_size,
            skip_bad_records=args.skip_bad_records, progress=not args.no_progress, record_map=record_map,
        )
        stats = preprocess(cfg, ["tools/preprocess_data.py", *argv])
    except (PreprocessError, InputError, TokenizerError, ValueError, OSError) as e:
        print(f"preprocess_data.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("preprocess_data.py: interrupted; no output written", file=sys.stderr)
        return 130
    print(summary(stats), file=sys.stderr)
    return 0
