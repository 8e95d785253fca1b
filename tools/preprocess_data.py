#!/usr/bin/env python
"""Tokenize a corpus into megatron-core indexed datasets. See docs/preprocess.md.

    python tools/preprocess_data.py --input corpus.jsonl --tokenizer-type SentencePieceTokenizer \
        --tokenizer-model tokenizer.model --output-prefix data/corpus --append-eod --workers 8
"""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.path.pardir)))

from moetrain.data.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
