"""Tokenizers usable both by the preprocessing tool and by megatron-core's datasets.

megatron-core 0.16.1's GPTDataset / BlendedMegatronDatasetBuilder read, from
``config.tokenizer``: ``vocab_size`` (an attribute, not a method), ``eod``, ``pad`` (falling
back to -1 on error), ``eos`` / ``special_tokens_dict`` (pad-collision check) and
``unique_identifiers`` (json-dumped into the dataset cache hash). The config's type hint is
``megatron.core.tokenizers.MegatronTokenizerBase``, so our classes subclass it.

Encoding semantics follow Megatron-LM's tokenizers so the preprocessed output is byte-identical:
- SentencePiece (``GPTSentencePieceTokenizer`` semantics): ``tokenize`` = ``encode_as_ids``,
  ``eod`` = the model's eos id, ``vocab_size`` = number of pieces.
- Hugging Face (``HuggingFaceTokenizer`` / ModelLink ``PretrainedFromHF``): ``tokenize`` =
  ``tokenizer(text).input_ids`` (special tokens added as the tokenizer configures, e.g. BOS),
  ``eod`` = eos_token_id, ``vocab_size`` = ``len(tokenizer)`` (includes added tokens).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

from megatron.core.tokenizers import MegatronTokenizerBase

__all__ = ["MoeTokenizer", "SentencePieceTokenizer", "HFTokenizer", "build_tokenizer", "TokenizerError"]

# Names users type, with the Megatron-LM / ModelLink spellings.
SENTENCEPIECE_TYPES = ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer")
HF_TYPES = ("PretrainedFromHF", "HuggingFaceTokenizer")


class TokenizerError(ValueError):
    """A tokenizer could not be built or lacks what the caller needs (e.g. an EOD token)."""


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class MoeTokenizer(MegatronTokenizerBase):
    """Common surface: tokenize / detokenize / encode_text, vocab_size, eod, pad, bos."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(path, {"library": kind})
        # Megatron's dataset cache key json-dumps this (via ``default=obj.unique_identifiers``).
        self.unique_identifiers = OrderedDict(cls=type(self).__name__, path=str(path))

    # ``encode_text`` never adds BOS/EOS: chat templates place special tokens themselves.
    def encode_text(self, text: str) -> list[int]:
        raise NotImplementedError

    def require_eod(self) -> int:
        if self.eod is None:
            raise TokenizerError(
                f"tokenizer {self.path!r} has no EOD/EOS token; --append-eod and instruction "
                "templates need one (pick a tokenizer with an eos token or drop --append-eod)"
            )
        return self.eod

    def vocab(self):  # pragma: no cover - part of the abstract interface
        return {self.id_to_piece(i): i for i in range(self.vocab_size)}

    def apply_chat_template(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError("use moetrain.data.templates for chat formatting")

    @property
    def eos(self) -> int | None:
        return self.eod

    @property
    def special_tokens_dict(self) -> dict[str, int]:
        out = {}
        for name, value in (("bos_token", self.bos), ("eos_token", self.eod), ("pad_token", self._pad_id)):
            if value is not None and value >= 0:
                out[name] = value
        return out

    @property
    def pad(self) -> int:
        """The pad id, or -1 (megatron-core's own "no pad" value) when none or shared with eod."""
        if self._pad_id is None or self._pad_id < 0 or self._pad_id == self.eod:
            return -1
        return self._pad_id

    def describe(self) -> dict:
        return {"type": type(self).__name__, "path": str(self.path), "vocab_size": self.vocab_size,
                "eod": self.eod, "pad": self.pad, "bos": self.bos}


class SentencePieceTokenizer(MoeTokenizer):
    def __init__(self, model_file: str) -> None:
        import sentencepiece as spm

        path = Path(model_file)
        if not path.is_file():
            raise TokenizerError(f"--tokenizer-model {model_file!r} is not a file")
        super().__init__(str(path), "sentencepiece")
        self._sp = spm.SentencePieceProcessor(model_file=str(path))
        self.unique_identifiers["sha256"] = _file_sha256(path)
        eos = self._sp.eos_id()
        self.eod = eos if eos >= 0 else None
        bos = self._sp.bos_id()
        self.bos = bos if bos >= 0 else None
        self._pad_id = self._sp.pad_id()

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def tokenize(self, text: str) -> list[int]:
        return self._sp.encode_as_ids(text)

    encode_text = tokenize

    def detokenize(self, ids) -> str:
        return self._sp.decode_ids([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(i)


class HFTokenizer(MoeTokenizer):
    def __init__(self, name_or_path: str) -> None:
        from transformers import AutoTokenizer

        path = Path(name_or_path)
        if not path.is_dir():
            raise TokenizerError(
                f"--tokenizer-name-or-path {name_or_path!r} is not a local directory "
                "(preprocessing runs offline: download the tokenizer first)"
            )
        super().__init__(str(path), "huggingface")
        try:
            self._tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        except Exception as e:  # transformers raises many types; one clear message is enough
            raise TokenizerError(f"cannot load a Hugging Face tokenizer from {name_or_path!r}: {e}") from e
        self.eod = self._tok.eos_token_id
        self.bos = self._tok.bos_token_id
        self._pad_id = self._tok.pad_token_id
        self._size = len(self._tok)

    @property
    def vocab_size(self) -> int:
        return self._size

    def tokenize(self, text: str) -> list[int]:
        return self._tok(text).input_ids

    def encode_text(self, text: str) -> list[int]:
        return self._tok(text, add_special_tokens=False).input_ids

    def detokenize(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self._tok.convert_ids_to_tokens(i)


def build_tokenizer(
    tokenizer_type: str, name_or_path: str | None = None, model_file: str | None = None
) -> MoeTokenizer:
    """Build a tokenizer by its Megatron / ModelLink type name."""
    if tokenizer_type in SENTENCEPIECE_TYPES:
        src = model_file or name_or_path
        if src and Path(src).is_dir():
            src = str(Path(src) / "tokenizer.model")
        if not src:
            raise TokenizerError(f"--tokenizer-type {tokenizer_type} needs --tokenizer-model")
        return SentencePieceTokenizer(src)
    if tokenizer_type in HF_TYPES:
        if not name_or_path:
            raise TokenizerError(f"--tokenizer-type {tokenizer_type} needs --tokenizer-name-or-path")
        return HFTokenizer(name_or_path)
    raise TokenizerError(
        f"unknown --tokenizer-type {tokenizer_type!r}; choose one of {', '.join(SENTENCEPIECE_TYPES + HF_TYPES)}"
    )
