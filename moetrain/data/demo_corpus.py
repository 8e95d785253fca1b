"""A small, deterministic English corpus that every Python installation carries, and a tokenizer for it.

Sources: the pydoc help topics (``pydoc_data.topics.topics``, the Python reference manual's text)
and the docstrings of standard-library modules, read with ``ast`` from the source files (no module
is imported, so nothing runs and the result only depends on the Python version).
"""

from __future__ import annotations

import ast
import io
import json
import sysconfig
from pathlib import Path

__all__ = ["build_demo_corpus", "train_sentencepiece", "iter_demo_documents"]

_MAX_BYTES = 3 << 20  # "a few MB at most"
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo"}


def _stdlib_docstrings():
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_DIRS.intersection(rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef))]
        for node in nodes:
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 200:  # short docstrings are mostly one-line signatures
                yield doc


def iter_demo_documents():
    from pydoc_data.topics import topics

    for key in sorted(topics):
        text = topics[key].strip()
        if text:
            yield text
    yield from _stdlib_docstrings()


def build_demo_corpus(out_dir) -> Path:
    """Write ``demo_corpus.jsonl`` (key ``text``, at most ~3 MB) into out_dir and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "demo_corpus.jsonl"
    size = 0
    with open(path, "w", encoding="utf-8") as f:
        for doc in iter_demo_documents():
            line = json.dumps({"text": doc}, ensure_ascii=False) + "\n"
            size += len(line.encode("utf-8"))
            if size > _MAX_BYTES:
                break
            f.write(line)
    return path


def train_sentencepiece(corpus_jsonl, out_dir, vocab_size: int = 512, model_type: str = "bpe") -> Path:
    """Train a SentencePiece model on a jsonl corpus (key ``text``); returns the tokenizer.model path.

    Ids follow Grok-1's layout (pad 0, bos 1, eos 2 = EOD, unk 3). Identity normalization and byte
    fallback make ``detokenize(tokenize(text)) == text`` for any text. Single-threaded training on
    unshuffled input is deterministic.
    """
    import sentencepiece as spm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def sentences():
        with open(corpus_jsonl, encoding="utf-8") as f:
            for line in f:
                for para in json.loads(line)["text"].split("\n"):
                    if para.strip():
                        yield para[:2000]

    # model_writer instead of model_prefix: the saved proto then holds no output path, so the
    # file's bytes do not depend on where it is written.
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences(), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
        character_coverage=1.0, byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="<pad>", bos_piece="<s>", eos_piece="</s>",
        unk_piece="<unk>", input_sentence_size=200_000, shuffle_input_sentence=False, num_threads=1,
        minloglevel=2,
    )
    path = out / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return path
