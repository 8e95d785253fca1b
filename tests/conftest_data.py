"""Helpers shared by tests/test_data_*.py (imported explicitly; tests/conftest.py belongs to others)."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

    from moetrain.data.cli import main as cli_main
    from moetrain.data.demo_corpus import build_demo_corpus, train_sentencepiece
    from moetrain.data.tokenizers import build_tokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared"
GROK_MODEL = SHARED / "tokenizers" / "grok1" / "tokenizer.model"

DOCS = [
    "Hello world. This is the first document.",
    "Ünïcödé text — with dashes, emoji 🚀 and\nnewlines\n\nand  double  spaces.",
    "   leading spaces and trailing   ",
    "def f(x):\n    return x * 2  # code\n",
    "The quick brown fox jumps over the lazy dog. " * 20,
]


@functools.lru_cache(maxsize=1)
def sp_model() -> str:
    """A 512-piece SentencePiece model trained once per test process on the demo corpus."""
    tmp = Path(tempfile.mkdtemp(prefix="moetrain_sp_"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    corpus = build_demo_corpus(tmp)
    return str(train_sentencepiece(corpus, tmp, vocab_size=512))


@functools.lru_cache(maxsize=4)
def tokenizer(model: str | None = None):
    return build_tokenizer("SentencePieceTokenizer", model_file=model or sp_model())


def sp_args(model: str | None = None) -> list[str]:
    return ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", model or sp_model()]


def run(argv: list[str]) -> int:
    return cli_main([*argv, "--no-progress"])


def shared_data() -> Path:
    data = SHARED / "data"
    if not data.is_dir():
        pytest.skip(f"shared sample data absent ({data}); the synthetic tests cover the same code")
    return data


def grok_model() -> str:
    if not GROK_MODEL.is_file():
        pytest.skip(f"Grok-1 tokenizer absent ({GROK_MODEL})")
    return str(GROK_MODEL)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_docs(prefix: str) -> list[np.ndarray]:
    ds = IndexedDataset(prefix)
    docs = []
    di = ds.document_indices
    for d in range(len(di) - 1):
        parts = [ds[i] for i in range(di[d], di[d + 1])]
        docs.append(np.concatenate(parts) if parts else np.zeros(0, dtype=ds.index.dtype))
    return docs


def megatron_reference(jsonl: Path, prefix: str, tok, keys=("text",), append_eod=True) -> None:
    """Megatron-LM tools/preprocess_data.py's documented algorithm (no --split-sentences), written
    independently: each JSON line -> per key, tokenize the text (or each sentence of a list), keep
    non-empty pieces, append EOD to a non-empty document, one add_document per key and line, dtype
    DType.optimal_dtype(vocab_size), output ``{prefix}_{key}_document``."""
    dtype = DType.optimal_dtype(tok.vocab_size)
    builders = {k: IndexedDatasetBuilder(f"{prefix}_{k}_document.bin", dtype=dtype) for k in keys}
    with open(jsonl, encoding="utf-8") as f:
        for line in f:
            data = json.loads(line)
            for k in keys:
                text = data[k]
                ids, lens = [], []
                for s in text if isinstance(text, list) else [text]:
                    t = tok.tokenize(s)
                    if t:
                        ids += t
                        lens.append(len(t))
                if ids and append_eod:
                    ids.append(tok.eod)
                    lens[-1] += 1
                builders[k].add_document(ids, lens)
    for k in keys:
        builders[k].finalize(f"{prefix}_{k}_document.idx")


def same_bytes(a: str, b: str) -> bool:
    return all(Path(a + ext).read_bytes() == Path(b + ext).read_bytes() for ext in (".bin", ".idx"))
