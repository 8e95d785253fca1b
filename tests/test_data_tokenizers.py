"""Tokenizers (SentencePiece, local Hugging Face) and the demo corpus / tokenizer builders."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest_data import DOCS, megatron_reference, run, same_bytes, sp_model, tokenizer, write_jsonl
from megatron.core.tokenizers import MegatronTokenizerBase

from moetrain.data.demo_corpus import build_demo_corpus, train_sentencepiece
from moetrain.data.tokenizers import TokenizerError, build_tokenizer


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A small byte-level BPE tokenizer saved as a local Hugging Face directory (no network)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(DOCS * 10, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    out = tmp_path_factory.mktemp("hf_tok")
    fast.save_pretrained(out)
    return out


def test_sentencepiece_surface():
    tok = tokenizer()
    assert isinstance(tok, MegatronTokenizerBase)
    assert tok.vocab_size == 512 and tok.eod == 2 and tok.bos == 1 and tok.pad == 0
    for text in DOCS:
        assert tok.detokenize(tok.tokenize(text)) == text
    json.dumps({"t": tok}, default=lambda o: o.unique_identifiers)  # megatron's dataset cache key


def test_hf_tokenizer_offline(hf_dir, tmp_path):
    tok = build_tokenizer("PretrainedFromHF", str(hf_dir))
    assert isinstance(tok, MegatronTokenizerBase)
    assert tok.eod == tok._tok.convert_tokens_to_ids("</s>") and tok.pad == 0
    assert tok.vocab_size == len(tok._tok)
    assert tok.detokenize(tok.tokenize(DOCS[0])) == DOCS[0]
    src = write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in DOCS])
    megatron_reference(src, str(tmp_path / "ref"), tok)
    assert run(["--input", str(src), "--tokenizer-type", "PretrainedFromHF", "--tokenizer-name-or-path",
                str(hf_dir), "--output-prefix", str(tmp_path / "o"), "--append-eod", "--workers", "2"]) == 0
    assert same_bytes(str(tmp_path / "o_text_document"), str(tmp_path / "ref_text_document"))


def test_build_tokenizer_errors(tmp_path):
    with pytest.raises(TokenizerError, match="unknown --tokenizer-type"):
        build_tokenizer("NoSuchTokenizer", "x")
    with pytest.raises(TokenizerError, match="not a file"):
        build_tokenizer("SentencePieceTokenizer", model_file=str(tmp_path / "missing.model"))
    with pytest.raises(TokenizerError, match="needs --tokenizer-model"):
        build_tokenizer("SentencePieceTokenizer")
    with pytest.raises(TokenizerError, match="not a local directory"):
        build_tokenizer("PretrainedFromHF", "some-org/some-model")


def test_demo_corpus_and_tokenizer_are_deterministic(tmp_path):
    corpus = build_demo_corpus(tmp_path / "a")
    assert 100_000 < corpus.stat().st_size <= 3 << 20
    first = json.loads(corpus.read_text().splitlines()[0])
    assert isinstance(first["text"], str) and len(first["text"]) > 50
    model = train_sentencepiece(corpus, tmp_path / "a", vocab_size=512)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(open(sp_model(), "rb").read()).hexdigest()
    # The corpus is a pure function of the Python installation: building it again gives the same bytes.
    import moetrain.data.demo_corpus as dc

    again = build_demo_corpus(tmp_path / "b")
    assert again.read_bytes() == corpus.read_bytes()
    assert dc.build_demo_corpus is build_demo_corpus
