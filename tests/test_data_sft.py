"""Instruction data: handlers, templates, label masking, truncation and packing boundaries."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest_data import read_docs, run, shared_data, sp_args, tokenizer, write_jsonl

from moetrain.data.handlers import make_handler
from moetrain.data.packing import LengthPolicy, Packer
from moetrain.data.templates import IGNORE_INDEX, TEMPLATES, Message

ALPACA = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "The sum is 5."},
    {"instruction": "Say hi.", "input": "", "output": "Hi!", "system": "Be brief.",
     "history": [["Who are you?", "A test assistant."]]},
]
SHAREGPT = [{
    "conversations": [
        {"from": "human", "value": "Find a recipe with rice."},
        {"from": "function_call", "value": '{"name": "search", "arguments": {"q": "rice"}}'},
        {"from": "observation", "value": '{"recipes": ["fried rice"]}'},
        {"from": "gpt", "value": "Try fried rice."},
    ],
    "tools": '[{"name": "search"}]',
}]
OPENAI = [{"messages": [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
]}]
MIXED = [
    {"type": "pretrain", "text": "Plain text to learn entirely."},
    {"type": "instruct", "instruct": "Translate to French.", "input": "cat", "output": "chat"},
    {"type": "conversation", "rounds": [["ask", "Hi?"], ["ans", "Hello."], ["ask", "Bye?"], ["ans", "Bye."]]},
    {"type": "ref_qa", "reference": "The sky is blue.", "rounds": [["ask", "Sky colour?"], ["ans", "Blue."]]},
]


def _encode(handler_name, record, prompt_type="chatml"):
    tok = tokenizer()
    handler = make_handler(handler_name, tok, ["text"], True, prompt_type, np.int32)
    return tok, handler.encode(record)


def _targets(tok, ids, labels) -> str:
    return tok.detokenize([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX and i != tok.eod])


@pytest.mark.parametrize("prompt_type", sorted(TEMPLATES))
def test_alpaca_label_masking_every_template(prompt_type):
    tok, out = _encode("AlpacaStyleInstructionHandler", ALPACA[1], prompt_type)
    ids, labels = out.input_ids, out.labels
    assert ids.shape == labels.shape
    target = labels != IGNORE_INDEX
    assert target.any() and not target.all()
    np.testing.assert_array_equal(labels[target], ids[target])  # labels align with input_ids
    text = _targets(tok, ids, labels)
    assert "A test assistant." in text and "Hi!" in text  # both replies are targets
    assert "Who are you?" not in text and "Say hi." not in text and "Be brief." not in text
    prompt = tok.detokenize([i for i, lab in zip(ids, labels) if lab == IGNORE_INDEX and i >= 4])
    assert "Who are you?" in prompt and "Say hi." in prompt and "Be brief." in prompt
    if TEMPLATES[prompt_type].eos_after_reply:
        assert (ids == tok.eod).sum() == 2 and labels[ids == tok.eod].tolist() == [tok.eod] * 2


def test_chatml_exact_layout():
    tok, out = _encode("AlpacaStyleInstructionHandler", ALPACA[0], "chatml")
    prompt = "<|im_start|>user\nAdd the numbers.\n2 and 3<|im_end|>\n<|im_start|>assistant\n"
    reply = "The sum is 5.<|im_end|>\n"
    want_ids = tok.encode_text(prompt) + tok.encode_text(reply)
    assert out.input_ids.tolist() == want_ids
    n = len(tok.encode_text(prompt))
    assert out.labels.tolist() == [IGNORE_INDEX] * n + want_ids[n:]


def test_sharegpt_tool_roles():
    tok, out = _encode("SharegptStyleInstructionHandler", SHAREGPT[0])
    text = _targets(tok, out.input_ids, out.labels)
    assert '"name": "search"' in text and "Try fried rice." in text  # function_call + reply learned
    assert "fried rice\"]" not in text  # the observation is prompt side
    full = tok.detokenize(out.input_ids)
    assert "<|im_start|>tool" in full and "following tools" in full


def test_openai_messages_and_role_content():
    tok, out = _encode("OpenAIStyleInstructionHandler", OPENAI[0])
    full = tok.detokenize(out.input_ids)
    assert full.startswith("<|im_start|>system\nYou are terse.")
    assert _targets(tok, out.input_ids, out.labels) == "Paris.<|im_end|>\n"
    # The sharegpt handler also accepts role/content "messages".
    tok, out2 = _encode("SharegptStyleInstructionHandler", OPENAI[0])
    assert out2.input_ids.tolist() == out.input_ids.tolist()


def test_mixed_types():
    tok = tokenizer()
    handler = make_handler("MixedTypeHandler", tok, ["text"], True, "plain", np.int32)
    pre, ins, conv, ref = (handler.encode(r) for r in MIXED)
    assert pre.labels.tolist() == pre.input_ids.tolist() and pre.input_ids[-1] == tok.eod
    assert _targets(tok, ins.input_ids, ins.labels) == "chat"
    # Each reply is encoded on its own (SentencePiece adds a leading "▁" per call).
    assert _targets(tok, conv.input_ids, conv.labels).split() == ["Hello.", "Bye."]
    assert "The sky is blue." in tok.detokenize(ref.input_ids)
    assert _targets(tok, ref.input_ids, ref.labels) == "Blue."


def test_length_policy_counts():
    ids = np.arange(10)
    labels = np.array([IGNORE_INDEX] * 4 + list(range(4, 10)))
    trunc = LengthPolicy(6, "truncate")
    got = trunc.apply(ids, labels)
    assert got[0].tolist() == list(range(6)) and trunc.truncated == 1
    assert trunc.apply(ids[:5], labels[:5])[0].size == 5 and trunc.truncated == 1
    assert LengthPolicy(3, "truncate").apply(ids, labels) is None  # no target left: dropped
    drop = LengthPolicy(6, "drop")
    assert drop.apply(ids, labels) is None and drop.dropped == 1


def test_packer_boundaries():
    packer = Packer(10)
    rows = []
    for n in (4, 5, 3, 10, 2):
        rows += list(packer.add(np.full(n, n), np.full(n, n)))
    rows += list(packer.finish())
    assert [r.input_ids.tolist() for r in rows] == [[4] * 4 + [5] * 5, [3] * 3, [10] * 10, [2] * 2]
    assert rows[0].attention_mask.tolist() == [1] * 4 + [2] * 5
    assert all(r.input_ids.size <= 10 for r in rows)


def test_cli_sft_outputs_and_packing(tmp_path):
    src = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA * 6)
    base = ["--input", str(src), *sp_args(), "--handler-name", "AlpacaStyleInstructionHandler",
            "--prompt-type", "llama2"]
    assert run([*base, "--output-prefix", str(tmp_path / "u")]) == 0
    ids = read_docs(str(tmp_path / "u_packed_input_ids_document"))
    labels = read_docs(str(tmp_path / "u_packed_labels_document"))
    mask = read_docs(str(tmp_path / "u_packed_attention_mask_document"))
    assert len(ids) == len(labels) == len(mask) == 12
    assert labels[0].dtype == np.int32 and (labels[0] == IGNORE_INDEX).any()
    longest = max(d.size for d in ids)

    seq = 3 * longest
    assert run([*base, "--output-prefix", str(tmp_path / "p"), "--pack", "--seq-length", str(seq)]) == 0
    pids = read_docs(str(tmp_path / "p_packed_input_ids_document"))
    pmask = read_docs(str(tmp_path / "p_packed_attention_mask_document"))
    assert len(pids) < 12 and all(p.size <= seq for p in pids)
    assert np.concatenate(pids).tolist() == np.concatenate(ids).tolist()  # whole samples, in order
    assert sum(int(m.max()) for m in pmask) == 12  # every sample is one segment of one row

    short = min(d.size for d in ids) - 1
    assert run([*base, "--output-prefix", str(tmp_path / "t"), "--seq-length", str(short)]) == 0
    meta = json.loads((tmp_path / "t_preprocess.json").read_text())["counts"]
    assert meta["truncated"] + meta["dropped"] == 12
    assert all(d.size <= short for d in read_docs(str(tmp_path / "t_packed_input_ids_document")))
    assert run([*base, "--output-prefix", str(tmp_path / "d"), "--seq-length", str(short), "--overlong", "drop"]) == 0
    assert json.loads((tmp_path / "d_preprocess.json").read_text())["counts"]["dropped"] == 12


def test_shared_alpaca_and_glaive(tmp_path):
    data = shared_data()
    for name, handler in (("alpaca_en_demo.json", "AlpacaStyleInstructionHandler"),
                          ("identity.json", "AlpacaStyleInstructionHandler"),
                          ("glaive_toolcall_en_demo.json", "SharegptStyleInstructionHandler")):
        records = json.loads((data / name).read_text())[:40]
        src = tmp_path / name
        src.write_text(json.dumps(records))
        out = tmp_path / name.split(".")[0]
        assert run(["--input", str(src), *sp_args(), "--handler-name", handler, "--prompt-type", "chatml",
                    "--output-prefix", str(out), "--workers", "2"]) == 0, name
        meta = json.loads((tmp_path / f"{out.name}_preprocess.json").read_text())
        assert meta["counts"]["records"] == 40 and meta["counts"]["samples"] + meta["counts"]["empty"] == 40
        labels = read_docs(f"{out}_packed_labels_document")
        assert all((lab != IGNORE_INDEX).any() for lab in labels)


def test_template_render_unit():
    tok = tokenizer()
    ids, labels = TEMPLATES["plain"].render([Message("user", "q"), Message("assistant", "a")], None, None, tok)
    assert ids[-1] == tok.eod and labels[-1] == tok.eod
