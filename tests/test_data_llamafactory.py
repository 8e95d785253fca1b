"""LLaMA-Factory's dataset_info.json: a dataset by name, its columns / tags, LLaMA-Factory's defaults;
the result equals the same records preprocessed with moetrain's own keys, byte for byte."""

from __future__ import annotations

import json

import pytest
from conftest_data import read_docs, run, shared_data, sp_args

OURS = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "The sum is 5.", "system": "Be brief.",
     "history": [["Who are you?", "A test assistant."]]},
    {"instruction": "Say hi.", "input": "", "output": "Hi!"},
]
THEIRS = [{"q": r["instruction"], "ctx": r["input"], "a": r["output"], "sys": r.get("system"),
           "hist": r.get("history")} for r in OURS]
SHAREGPT_OURS = [{"conversations": [{"from": "human", "value": "Find rice."}, {"from": "gpt", "value": "Fried rice."},
                                    {"from": "human", "value": "Thanks"}, {"from": "gpt", "value": "Welcome."}]}]
SHAREGPT_THEIRS = [{"messages": [{"role": "user", "content": t["value"]} if t["from"] == "human" else
                                 {"role": "assistant", "content": t["value"]} for t in SHAREGPT_OURS[0]["conversations"]]}]


def _outputs(prefix) -> list:
    return [read_docs(f"{prefix}_packed_{n}_document") for n in ("input_ids", "labels")]


def _same(a, b) -> bool:
    return all(len(x) == len(y) and all((p == q).all() for p, q in zip(x, y)) for x, y in zip(a, b))


def test_alpaca_and_sharegpt_entries_with_renamed_columns(tmp_path):
    (tmp_path / "mine.json").write_text(json.dumps(THEIRS))
    (tmp_path / "chat.json").write_text(json.dumps(SHAREGPT_THEIRS))
    (tmp_path / "ours.json").write_text(json.dumps(OURS))
    (tmp_path / "ours_chat.json").write_text(json.dumps(SHAREGPT_OURS))
    info = {"mine": {"file_name": "mine.json", "columns": {"prompt": "q", "query": "ctx", "response": "a",
                                                           "system": "sys", "history": "hist"}},
            "chat": {"file_name": "chat.json", "formatting": "sharegpt", "columns": {"messages": "messages"},
                     "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                              "assistant_tag": "assistant"}}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    common = ["--prompt-type", "chatml", *sp_args()]
    for name, ours, handler in (("mine", "ours.json", "AlpacaStyleInstructionHandler"),
                                ("chat", "ours_chat.json", "SharegptStyleInstructionHandler")):
        assert run(["--dataset-info", str(tmp_path / "dataset_info.json"), "--input", name, *common,
                    "--output-prefix", str(tmp_path / f"lf_{name}")]) == 0
        assert run(["--input", str(tmp_path / ours), "--handler-name", handler, *common,
                    "--output-prefix", str(tmp_path / f"ref_{name}")]) == 0
        assert _same(_outputs(tmp_path / f"lf_{name}"), _outputs(tmp_path / f"ref_{name}")), name
    # LLaMA-Factory trains the history replies: the first reply's tokens are targets.
    ids, labels = (x[0] for x in _outputs(tmp_path / "lf_mine"))
    assert (labels != -100).sum() > 0 and (labels[: len(ids) // 2] != -100).any()


def test_defaults_and_bad_entries(tmp_path, capsys):
    data = shared_data()
    info = {"alpaca_en_demo": {"file_name": str(data / "alpaca_en_demo.json")},
            "hub": {"hf_hub_url": "llamafactory/x"}, "bad": {"file_name": "x.json", "formatting": "csv"}}
    path = tmp_path / "dataset_info.json"
    path.write_text(json.dumps(info))
    common = ["--prompt-type", "chatml", *sp_args(), "--output-prefix", str(tmp_path / "out")]
    assert run(["--dataset-info", str(path), "--input", "alpaca_en_demo", *common]) == 0  # alpaca, default columns
    for name, message in (("nope", "is not an entry"), ("hub", "no file_name"), ("bad", "formatting 'csv'")):
        capsys.readouterr()
        assert run(["--dataset-info", str(path), "--input", name, *common]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("flag", ["--handler-name"])
def test_handler_contradicting_the_entry_is_refused(tmp_path, capsys, flag):
    (tmp_path / "mine.json").write_text(json.dumps(OURS))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "mine.json"}}))
    assert run(["--dataset-info", str(tmp_path / "dataset_info.json"), "--input", "mine", flag,
                "SharegptStyleInstructionHandler", "--prompt-type", "chatml", *sp_args(),
                "--output-prefix", str(tmp_path / "o")]) == 2
    assert "contradicts" in capsys.readouterr().err
