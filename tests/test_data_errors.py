"""Bad input: one clear message and exit code 2, counted skips, no valid-looking partial output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_data import read_docs, run, sp_args, write_jsonl

import moetrain.data.writer as writer_mod

REPO = Path(__file__).resolve().parents[1]


def _lines(tmp_path, lines: list[str]) -> Path:
    p = tmp_path / "in.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_malformed_line_names_file_and_line(tmp_path, capsys):
    src = _lines(tmp_path, ['{"text": "ok"}', '{"text": "ok"}', '{"text": broken', '{"text": "ok"}'])
    assert run(["--input", str(src), *sp_args(), "--output-prefix", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{src}:3:" in err and "malformed JSON" in err and "Traceback" not in err
    assert not list(tmp_path.glob("o_*")), "a failed run leaves no output, not even temporary files"


def test_skip_bad_records_counts_them(tmp_path):
    src = _lines(tmp_path, ['{"text": "a"}', "not json", '["a list"]', '{"other": 1}', '{"text": "b"}'])
    assert run(["--input", str(src), *sp_args(), "--output-prefix", str(tmp_path / "o"),
                "--skip-bad-records", "--workers", "2"]) == 0
    meta = json.loads((tmp_path / "o_preprocess.json").read_text())
    assert meta["counts"]["bad"] == 3 and meta["outputs"]["text_document"]["documents"] == 2
    assert any(":2:" in m for m in meta["bad_examples"])


def test_missing_key_lists_present_keys(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"content": "x", "id": 1}])
    assert run(["--input", str(src), *sp_args(), "--output-prefix", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "missing key 'text'" in err and "['content', 'id']" in err


def test_unknown_extension(tmp_path, capsys):
    src = tmp_path / "data.csv"
    src.write_text("a,b\n")
    assert run(["--input", str(src), *sp_args(), "--output-prefix", str(tmp_path / "o")]) == 2
    assert "unknown input extension" in capsys.readouterr().err


def test_missing_input(tmp_path, capsys):
    assert run(["--input", str(tmp_path / "nope*.jsonl"), *sp_args(), "--output-prefix", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_empty_documents_skipped_and_counted(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}, {"text": ""}, {"text": "b"}, {"text": ""}])
    assert run(["--input", str(src), *sp_args(), "--output-prefix", str(tmp_path / "o"), "--append-eod"]) == 0
    meta = json.loads((tmp_path / "o_preprocess.json").read_text())
    assert meta["counts"]["empty"] == 2 and len(read_docs(str(tmp_path / "o_text_document"))) == 2


def test_interrupted_run_leaves_no_idx(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": f"doc {i}"} for i in range(50)])
    original = writer_mod.DatasetWriter.add_document
    calls = {"n": 0}

    def interrupt(self, ids, lengths):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt
        original(self, ids, lengths)

    monkeypatch.setattr(writer_mod.DatasetWriter, "add_document", interrupt)
    assert run(["--input", str(src), *sp_args(), "--output-prefix", str(tmp_path / "o")]) == 130
    assert not list(tmp_path.glob("o*")), sorted(p.name for p in tmp_path.iterdir())


def test_tokenizer_without_eod(tmp_path, capsys):
    import sentencepiece as spm

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"sentence number {i} with words" for i in range(200)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "noeos"), vocab_size=40,
                                   eos_id=-1, bos_id=-1, minloglevel=2)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "hello"}])
    args = ["--input", str(src), *sp_args(str(tmp_path / "noeos.model")), "--output-prefix", str(tmp_path / "o")]
    assert run([*args, "--append-eod"]) == 2
    assert "no EOD/EOS token" in capsys.readouterr().err
    assert run(args) == 0  # without --append-eod it is fine


def test_bad_flags(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "hello"}])
    base = ["--input", str(src), "--output-prefix", str(tmp_path / "o")]
    assert run([*base, "--tokenizer-type", "PretrainedFromHF", "--tokenizer-name-or-path", str(tmp_path / "x")]) == 2
    assert "not a local directory" in capsys.readouterr().err
    assert run([*base, *sp_args(), "--pack"]) == 2
    assert "--pack needs --seq-length" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ['[{"text": "a"}, {"text": ', '{"text": "not an array"}'])
def test_malformed_json_array(tmp_path, capsys, bad):
    src = tmp_path / "in.json"
    src.write_text(bad)
    assert run(["--input", str(src), *sp_args(), "--output-prefix", str(tmp_path / "o")]) == 2
    assert str(src) in capsys.readouterr().err


def test_cli_subprocess_exit_code_and_no_traceback(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": oops}\n')
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(src),
                           *sp_args(), "--output-prefix", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and f"{src}:1:" in proc.stderr
