"""LoRA against transformers + peft (fp32, tiny Llama and tiny Grok-1 with per-expert adapters): the same losses and the same trained A / B
after a few SGD steps from the same initial factors on the same batches, on 1 rank and under TP2
with sequence parallelism (column-parallel B / row-parallel A sharded, replicated factors reduced)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hf_reference import hf_model
from lora_ranks import lora_sft_steps

from moetrain.testing.spawn import run_on_ranks
from moetrain.training.sft_data import IGNORE_INDEX, Collate

pytestmark = pytest.mark.multirank

# Plain SGD: the comparison is of gradients; Adam's normalisation would turn fp32 noise in
# near-zero gradient entries into whole-step differences.
R, ALPHA, LR, STEPS = 4, 8.0, 0.5, 3
RTOL = 1e-5


def _batches(vocab: int, seq: int):
    """STEPS micro-batches of two rows each (prompt masked), as the SFT collate makes them."""
    rng = np.random.default_rng(5)
    collate = Collate(seq_length=seq, pad_id=0, variable_seq_lengths=True)
    out = []
    for _ in range(STEPS):
        rows = []
        for prompt, reply in ((5, 9), (3, 12)):
            ids = rng.integers(1, vocab, prompt + reply).astype(np.int64)
            labels = ids.copy()
            labels[:prompt] = IGNORE_INDEX
            rows.append({"input_ids": ids, "labels": labels, "attention_mask": np.ones(ids.size, dtype=np.int64)})
        out.append((rows, collate(rows)))
    return out


# moetrain targets and the HF modules they cover, per family (Grok-1: attention and every expert).
TARGETS = {
    "llama-tiny": (["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"],
                   ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "grok1-tiny": (["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"],
                   ["q_proj", "k_proj", "v_proj", "o_proj", "linear", "linear_v", "linear_1"]),
}


def _peft_reference(model, init, batches, hf_targets, is_moe):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, bias="none", target_modules=hf_targets)
    peft_model = get_peft_model(model, config)
    state = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, value in init.items():
            state[name.replace(".weight", ".default.weight")].copy_(value)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=LR)
    losses = []
    for rows, batch in batches:
        opt.zero_grad(set_to_none=True)
        s = batch["tokens"].shape[1]
        labels = torch.full((len(rows), s), IGNORE_INDEX, dtype=torch.long)
        for i, r in enumerate(rows):
            labels[i, : len(r["labels"])] = torch.from_numpy(r["labels"])
        kwargs = {"output_router_logits": False} if is_moe else {}  # no aux loss in the comparison
        loss = peft_model(input_ids=batch["tokens"], labels=labels, **kwargs).loss
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    trained = {n.replace(".default.weight", ".weight"): p.detach().clone()
               for n, p in peft_model.named_parameters() if "lora_" in n}
    return losses, trained


@pytest.fixture(scope="module", params=list(TARGETS))
def setup(request, tmp_path_factory):
    cfg, model = hf_model(request.param)
    if cfg.is_moe:
        cfg = dataclasses.replace(cfg, moe_aux_loss_coeff=0.0)
    targets, hf_targets = TARGETS[request.param]
    gen = torch.Generator().manual_seed(11)
    init = {}
    for name, module in model.named_modules():
        if name.split(".")[-1] in hf_targets:
            peft_name = f"base_model.model.{name}"
            init[f"{peft_name}.lora_A.weight"] = torch.randn(R, module.in_features, generator=gen) * 0.1
            init[f"{peft_name}.lora_B.weight"] = torch.randn(module.out_features, R, generator=gen) * 0.1
    path = tmp_path_factory.mktemp("hf") / "llama.pt"
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, path)
    batches = _batches(cfg.vocab_size, cfg.seq_length)
    ref_losses, ref_trained = _peft_reference(model, init, batches, hf_targets, cfg.is_moe)
    return cfg, path, init, batches, ref_losses, ref_trained, targets


@pytest.mark.parametrize("tp", [1, 2])
def test_lora_steps_equal_peft(setup, tp):
    cfg, path, init, batches, ref_losses, ref_trained, targets = setup
    if tp > 1 and cfg.is_moe:
        pytest.skip("MoE adapters under TP / EP are compared with the 1-rank run in the trainer tests")
    results = run_on_ranks(tp, lora_sft_steps, (cfg, tp, str(path), init, [b for _, b in batches], R, ALPHA, LR,
                                                targets), timeout=300)
    got = results[0]
    assert got["losses"] == pytest.approx(ref_losses, rel=RTOL), f"losses {got['losses']} vs peft {ref_losses}"
    assert sorted(got["trained"]) == sorted(ref_trained)
    for name, ref in ref_trained.items():
        torch.testing.assert_close(got["trained"][name], ref, rtol=RTOL, atol=RTOL * float(ref.abs().max()),
                                   msg=lambda m, n=name: f"{n}: {m}")
    assert all(r["base_unchanged"] for r in results), "a frozen base weight moved"
    assert all(not r["frozen_with_grad"] for r in results)
    assert all("lora" in n for n in got["trainable"])
