#!/usr/bin/env python
"""Concatenate several indexed datasets (same dtype) into one, in the order given.

    python tools/merge_datasets.py --input data/a_text_document data/b_text_document \
        --output-prefix data/ab_text_document
    python tools/merge_datasets.py --input data/shards/ --output-prefix data/all_text_document

A directory input merges every prefix found in it (``*.idx`` with a matching ``.bin``), sorted by name.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.path.pardir)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="merge_datasets.py", description=__doc__.split("\n")[0])
    p.add_argument("--input", nargs="+", required=True, help="dataset prefixes (or directories of them)")
    p.add_argument("--output-prefix", required=True, help="output prefix (writes .bin and .idx)")
    args = p.parse_args(argv)
    from moetrain.data.pipeline import PreprocessError
    from moetrain.data.preprocess import merge_prefixes

    prefixes = []
    for item in args.input:
        if os.path.isdir(item):
            found = sorted(f[:-4] for f in os.listdir(item) if f.endswith(".idx"))
            prefixes += [os.path.join(item, f) for f in found if os.path.exists(os.path.join(item, f + ".bin"))]
        else:
            prefixes.append(item[:-4] if item.endswith((".idx", ".bin")) else item)
    if not prefixes:
        print("merge_datasets.py: error: no datasets found", file=sys.stderr)
        return 2
    try:
        out = merge_prefixes(prefixes, args.output_prefix)
    except (PreprocessError, ValueError, OSError) as e:
        print(f"merge_datasets.py: error: {e}", file=sys.stderr)
        return 2
    print(f"merged {len(prefixes)} datasets into {args.output_prefix}: {out['documents']} documents, "
          f"{out['tokens']} tokens", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
