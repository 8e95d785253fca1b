"""The generate command line: prompts file -> results file, the chat loop (driven through a pty
with pexpect), and every kind of bad input stopped before a rank starts.

The model is grok1-tiny with random weights saved as an HF directory, the tokenizer the tests'
512-piece SentencePiece model. Expected replies are computed independently with transformers'
``generate`` on the same weights and the template's token ids.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pexpect
import pytest
import torch
from conftest_data import sp_model, tokenizer  # tests/ is on sys.path under pytest
from hf_reference import hf_model

from moetrain.config import ConfigError
from moetrain.data.templates import Message, get_template
from moetrain.inference.options import GenerateConfig, prepare
from moetrain.parallel import LayoutError

MAX_NEW = 8


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    cfg, model = hf_model("grok1-tiny")
    path = tmp_path_factory.mktemp("gen_cli") / "grok1"
    model.save_pretrained(path)
    return path, model


def _hf_reply(model, ids: list[int]) -> list[int]:
    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=0, eos_token_id=None, use_cache=False)
    return out[0, len(ids):].tolist()


def _base_args(path) -> list[str]:
    return ["--load", str(path), "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", sp_model(),
            "--max-new-tokens", str(MAX_NEW)]


def test_prompts_file_to_results_file(hf_dir, tmp_path):
    path, model = hf_dir
    prompts = ["The quick brown fox", "def main():", "Hello"]
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    dst = tmp_path / "results.jsonl"
    proc = subprocess.run([sys.executable, "-m", "moetrain.inference.generate", *_base_args(path),
                           "--input-file", str(src), "--output-file", str(dst), "--micro-batch-size", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in dst.read_text().splitlines()]
    tok = tokenizer()
    assert [r["prompt"] for r in records] == prompts
    for r, p in zip(records, prompts):
        ids = tok.encode_text(p)
        assert r["prompt_tokens"] == len(ids) and r["output_tokens"] == len(r["output_ids"])
        expected = _hf_reply(model, ids)
        if tok.eos in expected:  # the tokenizer's EOS stops generation
            expected = expected[:expected.index(tok.eos)]
        assert r["output_ids"] == expected
        assert r["output"] == tok.detokenize(expected)
    assert not list(tmp_path.glob("results.jsonl.tmp*")), "the temporary file must be renamed"


def test_chat_two_turns_through_a_terminal(hf_dir):
    """Two turns typed into --task chat; each answer is HF's greedy reply to the template's prompt
    (the second one with the first exchange as history). --top-k 1 makes sampling greedy."""
    path, model = hf_dir
    child = pexpect.spawn(sys.executable, ["-m", "moetrain.inference.generate", *_base_args(path), "--task", "chat",
                                           "--prompt-type", "chatml", "--top-k", "1", "--stream"],
                          encoding="utf-8", timeout=240)
    template, tok = get_template("chatml"), tokenizer()
    history: list[Message] = []
    try:
        child.expect_exact("User: ")
        for question in ("Hello there", "And what else?"):
            child.sendline(question)
            child.expect_exact(question)  # the terminal echoes what was typed
            child.expect(r"(?s)Assistant: (.*?)\r?\nUser: ", timeout=120)
            answer = child.match.group(1).replace("\r\n", "\n")
            history.append(Message("user", question))
            ids = template.prompt(history, None, tok)
            reply_ids = _hf_reply(model, ids)
            expected = tok.detokenize(reply_ids)
            if template.end_of_turn in expected:
                expected = expected[:expected.index(template.end_of_turn)]
            assert answer == expected, f"turn {len(history) // 2 + 1}"
            history.append(Message("assistant", answer))
        child.sendline("/exit")
        child.expect(pexpect.EOF, timeout=60)
    finally:
        child.close()
    assert child.exitstatus == 0


def _cfg(path, **kw) -> GenerateConfig:
    base = dict(load=str(path), tokenizer_type="SentencePieceTokenizer", tokenizer_model=sp_model(), prompt="Hi")
    return GenerateConfig(**{**base, **kw})


@pytest.mark.parametrize(("change", "error", "words"), [
    ({"model": "llama-tiny"}, ConfigError, "incompatible model"),
    ({"tensor_model_parallel_size": 3}, LayoutError, "--num-attention-heads 4 is not divisible"),
    ({"expert_model_parallel_size": 3}, LayoutError, "--num-experts 4 is not divisible"),
    ({"prompt": "   "}, ConfigError, "--prompt: the prompt is empty"),
    ({"prompt": "word " * 200}, ConfigError, "positions"),
    ({"task": "chat", "prompt": None}, ConfigError, "--task chat needs --prompt-type"),
    ({"task": "do_sample", "temperature": 0.0}, ConfigError, "--temperature must be > 0"),
    ({"load": "/nonexistent/ckpt"}, ConfigError, "no such directory"),
])
def test_bad_input_is_stopped_before_ranks_start(hf_dir, change, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(")):
        cfg = _cfg(hf_dir[0], **change)
        prepare(cfg, world_size=cfg.tensor_model_parallel_size * cfg.expert_model_parallel_size)


def test_bad_line_of_an_input_file_is_named(hf_dir, tmp_path):
    src = tmp_path / "prompts.jsonl"
    src.write_text('{"prompt": "fine"}\n{"prompt": ""}\n')
    with pytest.raises(ConfigError, match=r"prompts.jsonl:2: the prompt is empty"):
        prepare(_cfg(hf_dir[0], prompt=None, input_file=str(src)), world_size=1)
    src.write_text('{"prompt": "fine"}\nnot json\n')
    with pytest.raises(ConfigError, match=r"prompts.jsonl:2: not JSON"):
        prepare(_cfg(hf_dir[0], prompt=None, input_file=str(src)), world_size=1)
