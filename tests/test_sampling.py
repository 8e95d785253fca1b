"""Token choice and stop rules (moetrain/inference/sampling.py, stopping.py): pure functions, no ranks."""

from __future__ import annotations

import torch

from moetrain.inference.sampling import SamplingParams, filter_logits, next_tokens
from moetrain.inference.stopping import StopRule


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = filter_logits(logits, SamplingParams(greedy=False, temperature=1.0, top_k=2, top_p=1.0))
    assert torch.isfinite(kept).tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_the_smallest_set_reaching_p_and_always_the_best():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = filter_logits(logits, SamplingParams(greedy=False, temperature=1.0, top_k=0, top_p=0.8))
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]  # 0.5 + 0.3 reaches 0.8
    kept = filter_logits(logits, SamplingParams(greedy=False, temperature=1.0, top_k=0, top_p=0.1))
    assert torch.isfinite(kept).tolist() == [[True, False, False, False]]


def test_sampling_follows_the_distribution_and_the_seed():
    logits = torch.tensor([0.0, 1.0, 2.0]).log_softmax(0).expand(4000, 3)
    params = SamplingParams(greedy=False, temperature=1.0, top_k=0, top_p=1.0)
    draws = next_tokens(logits, params, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).float() / len(draws)
    expected = torch.tensor([0.0, 1.0, 2.0]).softmax(0)
    assert torch.allclose(freq, expected, atol=0.03)  # 4000 draws: 3 standard errors ~ 0.02
    again = next_tokens(logits, params, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    assert next_tokens(logits[:2], SamplingParams(greedy=True), None).tolist() == [2, 2]


def test_stop_rule_tokens_and_text():
    rule = StopRule({2}, ["<|im_end|>"], decode=lambda ids: "".join(chr(96 + i) for i in ids))
    assert rule([5, 6]) is None
    assert rule([5, 2]) == 1  # the stop token is dropped
    text_rule = StopRule((), ["cd"], decode=lambda ids: "".join(chr(96 + i) for i in ids))
    assert text_rule([1, 2, 3]) is None and text_rule([1, 2, 3, 4]) == 0
    assert text_rule.cut_text("abcdef") == "ab"


def test_bad_sampling_settings_are_named():
    problems = SamplingParams(greedy=False, temperature=0.0, top_k=-1, top_p=1.5).check()
    assert [p.split()[0] for p in problems] == ["--temperature", "--top-k", "--top-p"]
