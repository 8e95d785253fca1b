"""Pretraining preprocessing: round trip, Megatron-LM byte identity, input formats, shards, readers."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest_data import (
    DOCS,
    grok_model,
    megatron_reference,
    read_docs,
    run,
    same_bytes,
    shared_data,
    sp_args,
    tokenizer,
    write_jsonl,
)

from moetrain.data.readers import expand_inputs, read_unit, split_units


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", [{"text": d, "id": i} for i, d in enumerate(DOCS * 8)])


def test_detokenize_round_trip(tmp_path, corpus):
    assert run(["--input", str(corpus), *sp_args(), "--output-prefix", str(tmp_path / "o"), "--append-eod"]) == 0
    tok = tokenizer()
    docs = read_docs(str(tmp_path / "o_text_document"))
    assert len(docs) == len(DOCS) * 8
    for doc, text in zip(docs, DOCS * 8):
        assert doc[-1] == tok.eod
        assert tok.detokenize(doc[:-1]) == text
    meta = json.loads((tmp_path / "o_preprocess.json").read_text())
    assert meta["counts"]["records"] == 40 and meta["outputs"]["text_document"]["documents"] == 40
    assert len(meta["outputs"]["text_document"]["sha256"]["bin"]) == 64


@pytest.mark.parametrize("workers", [1, 2])
def test_byte_identical_to_megatron(tmp_path, corpus, workers):
    megatron_reference(corpus, str(tmp_path / "ref"), tokenizer())
    args = ["--input", str(corpus), *sp_args(), "--output-prefix", str(tmp_path / "o"), "--append-eod"]
    assert run([*args, "--workers", str(workers), "--chunk-size", "3"]) == 0
    assert same_bytes(str(tmp_path / "o_text_document"), str(tmp_path / "ref_text_document"))


def test_several_keys_and_sentence_lists(tmp_path):
    recs = [{"a": d, "b": [d, "second sentence"]} for d in DOCS]
    src = write_jsonl(tmp_path / "k.jsonl", recs)
    megatron_reference(src, str(tmp_path / "ref"), tokenizer(), keys=("a", "b"), append_eod=False)
    assert run(["--input", str(src), *sp_args(), "--output-prefix", str(tmp_path / "o"), "--json-keys", "a", "b"]) == 0
    for key in ("a", "b"):
        assert same_bytes(str(tmp_path / f"o_{key}_document"), str(tmp_path / f"ref_{key}_document"))


def _expected(tmp_path, texts):
    src = write_jsonl(tmp_path / "expected.jsonl", [{"text": t} for t in texts])
    megatron_reference(src, str(tmp_path / "ref"), tokenizer())
    return str(tmp_path / "ref_text_document")


def test_every_input_format(tmp_path):
    texts = [d.replace("\n", " ") for d in DOCS]  # .txt holds one document per line
    ref = _expected(tmp_path, texts)
    d = tmp_path / "in"
    d.mkdir()
    write_jsonl(d / "a.jsonl", [{"text": t} for t in texts])
    with gzip.open(d / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    (d / "c.json").write_text(json.dumps([{"text": t} for t in texts], indent=2))
    pq.write_table(pa.table({"text": texts}), d / "d.parquet", row_group_size=2)
    (d / "e.txt").write_text("\n".join(texts) + "\n")
    for name in ("a.jsonl", "b.jsonl.gz", "c.json", "d.parquet", "e.txt"):
        out = tmp_path / name.replace(".", "_")
        assert run(["--input", str(d / name), *sp_args(), "--output-prefix", str(out), "--append-eod"]) == 0, name
        assert same_bytes(f"{out}_text_document", ref), name
    # A directory (sorted names) and a glob give the five files in order.
    assert run(["--input", str(d), *sp_args(), "--output-prefix", str(tmp_path / "dir"), "--append-eod"]) == 0
    assert len(read_docs(str(tmp_path / "dir_text_document"))) == 5 * len(texts)
    assert run(["--input", str(d / "*.json*"), *sp_args(), "--output-prefix", str(tmp_path / "g"), "--append-eod"]) == 0
    assert len(read_docs(str(tmp_path / "g_text_document"))) == 3 * len(texts)
    # Writing into the input directory, then reading it again: the run's own sidecar and outputs are skipped.
    assert run(["--input", str(d), *sp_args(), "--output-prefix", str(d / "again"), "--append-eod"]) == 0
    assert (d / "again_preprocess.json").is_file()
    assert run(["--input", str(d), *sp_args(), "--output-prefix", str(d / "again"), "--append-eod"]) == 0
    assert len(read_docs(str(d / "again_text_document"))) == 5 * len(texts)


def test_json_array_reader_crosses_chunk_boundaries(tmp_path, monkeypatch):
    import moetrain.data.readers as readers

    monkeypatch.setattr(readers, "_JSON_CHUNK", 7)  # every element spans several chunks
    recs = [{"text": t, "n": [1, {"x": "]"}]} for t in DOCS]
    (tmp_path / "x.json").write_text(json.dumps(recs))
    got = [r.payload for r in read_unit(expand_inputs(str(tmp_path / "x.json"))[0])]
    assert got == recs


def test_split_units_keeps_every_line_once(tmp_path):
    lines = [json.dumps({"text": f"line {i} " + "x" * (i % 17)}) for i in range(200)]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    write_jsonl(tmp_path / "b.jsonl", [{"text": "b"}] * 3)
    units = expand_inputs(str(tmp_path))
    for parts in (1, 2, 3, 7):
        shards = split_units(units, parts)
        got = [(r.source, r.line, r.payload) for shard in shards for u in shard for r in read_unit(u)]
        want = [(r.source, r.line, r.payload) for u in units for r in read_unit(u)]
        assert got == want, parts


def test_partitions_then_merge_equal_single_run(tmp_path, corpus):
    base = ["--input", str(corpus), *sp_args(), "--append-eod", "--workers", "2"]
    assert run([*base, "--output-prefix", str(tmp_path / "one")]) == 0
    assert run([*base, "--output-prefix", str(tmp_path / "three"), "--partitions", "3"]) == 0
    assert same_bytes(str(tmp_path / "one_text_document"), str(tmp_path / "three_text_document"))
    assert not list(tmp_path.glob("*part*")), "partition files are removed after the merge"


def test_merge_tool(tmp_path, corpus):
    import importlib.util

    spec = importlib.util.spec_from_file_location("merge_datasets", Path(__file__).parents[1] / "tools/merge_datasets.py")
    merge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(merge)
    lines = corpus.read_text().splitlines(keepends=True)
    (tmp_path / "p1.jsonl").write_text("".join(lines[:13]))
    (tmp_path / "p2.jsonl").write_text("".join(lines[13:]))
    for p in ("p1", "p2", "corpus"):
        assert run(["--input", str(tmp_path / f"{p}.jsonl"), *sp_args(), "--append-eod",
                    "--output-prefix", str(tmp_path / f"o{p}")]) == 0
    assert merge.main(["--input", str(tmp_path / "op1_text_document"), str(tmp_path / "op2_text_document"),
                       "--output-prefix", str(tmp_path / "merged")]) == 0
    assert same_bytes(str(tmp_path / "merged"), str(tmp_path / "ocorpus_text_document"))


def test_gpt_dataset_reads_output(tmp_path, corpus):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    assert run(["--input", str(corpus), *sp_args(), "--output-prefix", str(tmp_path / "o"), "--append-eod"]) == 0
    tok = tokenizer()
    config = GPTDatasetConfig(
        random_seed=1234, sequence_length=32, blend=([str(tmp_path / "o_text_document")], None),
        split="90,10,0", path_to_cache=str(tmp_path / "cache"), tokenizer=tok,
        reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
    )
    train, valid, _ = BlendedMegatronDatasetBuilder(GPTDataset, [20, 4, None], lambda: True, config).build()
    sample = train[0]
    assert sample["tokens"].shape == (32,) and sample["labels"].shape == (32,)
    assert int(sample["tokens"].max()) < tok.vocab_size
    assert valid is not None and len(valid) >= 4


def test_shared_c4_with_grok1_is_byte_identical(tmp_path):
    data = shared_data()
    model = grok_model()
    src = tmp_path / "c4.jsonl"
    with open(data / "c4_demo.jsonl") as f:  # the first 60 documents keep the test fast
        src.write_text("".join(line for _, line in zip(range(60), f)))
    tok = tokenizer(model)
    megatron_reference(src, str(tmp_path / "ref"), tok)
    assert run(["--input", str(src), *sp_args(model), "--output-prefix", str(tmp_path / "o"),
                "--append-eod", "--workers", "2"]) == 0
    assert same_bytes(str(tmp_path / "o_text_document"), str(tmp_path / "ref_text_document"))
    docs = read_docs(str(tmp_path / "o_text_document"))
    assert docs[0].dtype == np.int32  # 131072 pieces: Megatron's optimal dtype is int32
    first = json.loads(src.read_text().splitlines()[0])["text"]
    assert tok.detokenize(docs[0][:-1]) == first


def test_shared_txt_and_wiki(tmp_path):
    data = shared_data()
    src = tmp_path / "wiki.txt"
    with open(data / "wiki_demo.txt") as f:
        src.write_text("".join(line for _, line in zip(range(50), f)))
    shutil.copy(src, tmp_path / "copy.txt")
    assert run(["--input", str(src), *sp_args(), "--output-prefix", str(tmp_path / "o"), "--append-eod"]) == 0
    tok = tokenizer()
    lines = [ln for ln in src.read_text().split("\n") if ln.strip()]
    docs = read_docs(str(tmp_path / "o_text_document"))
    assert [tok.detokenize(d[:-1]) for d in docs] == lines
