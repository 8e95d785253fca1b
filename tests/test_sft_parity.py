"""SFT against the Hugging Face reference and against itself (fp32, tiny random models, 1 gloo rank).

Micro-batches come from ``moetrain.training.sft_data.Collate`` (rows as the preprocessor writes
them: ``input_ids``, ``labels`` with -100 on the prompt, ``attention_mask`` holding sample ids) and
go through ``moetrain.training.sft_step.sft_forward_step`` and its token-sum loss:

* the SFT loss sum / trained tokens and its gradients equal the HF model's loss with
  ``labels = input_ids`` on replies and -100 on prompt and padding (HF shifts internally; the
  collate's own shift must agree);
* a packed row [A | B] with ``reset_attention_mask`` + ``reset_position_ids`` gives the per-sample
  losses and summed gradients of A and B run as separate rows; without the isolation mask B's
  loss moves (the check has teeth), and the reset positions equal HF's ``position_ids`` (so the
  rotary-position hook does what HF does);
* a row with no trained token is finite and contributes nothing.

One spawn per flavor runs every case on one model; the tests below read its results.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hf_reference import hf_model
from sft_parity_ranks import sft_cases  # tests/ is on sys.path under pytest

from moetrain.testing.spawn import run_on_ranks
from moetrain.training.sft_data import IGNORE_INDEX, Collate, isolation_mask

pytestmark = pytest.mark.multirank

FLAVORS = ["llama-tiny", "mixtral-tiny", "grok1-tiny"]
PAD_ID = 0
# (prompt tokens, reply tokens): A and B of different lengths, Z with no target at all.
SAMPLES = {"A": (9, 18), "B": (6, 12), "Z": (11, 0)}
LOSS_RTOL = 1e-5
GRAD_TOL = 1e-5  # of the gradient's largest entry
LEAK_RTOL = 100 * LOSS_RTOL  # B's loss must move at least this much when it may attend to A


@torch.no_grad()
def _context_sensitive(model, seed: int = 0) -> None:
    """Llama / Mixtral weights N(0, 0.1), norm scales 1 + N(0, 0.1): hf_reference's N(0, 0.05)
    everywhere (norm scales included) leaves the tiny models almost blind to context, so that
    attending across a packing boundary would move B's loss by only ~1e-5 (the check's tolerance)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.1 * noise)


def _samples(vocab: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(3)
    out = {}
    for name, (prompt, reply) in SAMPLES.items():
        ids = rng.integers(1, vocab, prompt + reply).astype(np.int64)
        labels = ids.copy()
        labels[:prompt] = IGNORE_INDEX
        out[name] = (ids, labels)
    return out


def _row(samples, *names) -> dict[str, np.ndarray]:
    """One preprocessed row holding the named samples in order (packed when more than one)."""
    ids = np.concatenate([samples[n][0] for n in names])
    labels = np.concatenate([samples[n][1] for n in names])
    sid = np.concatenate([np.full(samples[n][0].size, i + 1, dtype=np.int64) for i, n in enumerate(names)])
    return {"input_ids": ids, "labels": labels, "attention_mask": sid}


def _collate(seq_length: int, **flags) -> Collate:
    return Collate(seq_length=seq_length, pad_id=PAD_ID, variable_seq_lengths=True, **flags)


def _hf_labels(rows, s: int) -> torch.Tensor:
    """HF labels from the *unshifted* row labels: the token itself where trained, -100 elsewhere."""
    labels = torch.full((len(rows), s), IGNORE_INDEX, dtype=torch.long)
    for i, r in enumerate(rows):
        labels[i, : len(r["labels"])] = torch.from_numpy(r["labels"])
    return labels


def _hf_forward(cfg, model, **kwargs):
    if cfg.is_moe:
        kwargs["output_router_logits"] = False  # no aux loss in the comparison
    return model(**kwargs)


def _per_token_ce(logits: torch.Tensor, batch) -> torch.Tensor:
    """[b, s] CE of the collate's (already shifted) targets, 0 where not trained."""
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1), reduction="none")
    return ce.reshape(batch["labels"].shape) * batch["loss_mask"]


def _sample_sums(per_token: torch.Tensor, batch, row_sids: list[np.ndarray]) -> list[dict[int, float]]:
    """Per row, {sample id: sum of trained-token CE}; target position t belongs to token t's sample."""
    out = []
    masked = per_token * batch["loss_mask"]
    for i, sid in enumerate(row_sids):
        sid_t = torch.zeros(per_token.shape[1], dtype=torch.long)
        sid_t[: sid.size] = torch.from_numpy(sid)
        out.append({int(k): float(masked[i][sid_t == k].sum()) for k in np.unique(sid)})
    return out


@pytest.fixture(scope="module", params=FLAVORS)
def run(request, tmp_path_factory):
    cfg, model = hf_model(request.param)
    if cfg.hf_architecture != "Grok1ModelForCausalLM":  # Grok-1's reference weights are sharp already
        _context_sensitive(model)
    if cfg.is_moe:
        cfg = dataclasses.replace(cfg, moe_aux_loss_coeff=0.0)
    samples = _samples(cfg.vocab_size)
    rows = {n: _row(samples, n) for n in SAMPLES}
    packed_ab, packed_azb = _row(samples, "A", "B"), _row(samples, "A", "Z", "B")
    s = cfg.seq_length
    isolate = dict(reset_attention_mask=True, reset_position_ids=True)
    batches = {  # name: (rows, collate, reset_position_ids)
        "batch": ([rows["A"], rows["Z"], rows["B"]], _collate(s), False),
        "unpacked": ([rows["A"], rows["B"]], _collate(s), False),
        "all_empty": ([rows["Z"]], _collate(s), False),
        "packed": ([packed_ab], _collate(s, **isolate), True),
        "packed_with_empty": ([packed_azb], _collate(s, **isolate), True),
        "packed_no_mask": ([packed_ab], _collate(s, reset_position_ids=True), True),
        "packed_plain": ([packed_ab], _collate(s), False),
    }
    collated = {name: coll(rs) for name, (rs, coll, _) in batches.items()}
    path = tmp_path_factory.mktemp("hf") / f"{cfg.name}.pt"
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, path)
    cases = {name: (collated[name], reset) for name, (_, _, reset) in batches.items()}
    (results,) = run_on_ranks(1, sft_cases, (cfg, str(path), cases), timeout=240)

    # HF references.
    ref = {}
    rs, batch = batches["batch"][0], collated["batch"]
    model.zero_grad()
    out = _hf_forward(cfg, model, input_ids=batch["tokens"], labels=_hf_labels(rs, batch["tokens"].shape[1]))
    out.loss.backward()
    ref["loss"] = float(out.loss.detach())
    ref["grads"] = {k: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
                    for k, p in model.named_parameters()}
    with torch.no_grad():
        packed = collated["packed_no_mask"]
        # Reset positions, plain causal attention: a 2-D all-ones mask keeps transformers from
        # inferring packed sequences from the position ids (Grok-1's HF port never does).
        mask = None if cfg.hf_architecture == "Grok1ModelForCausalLM" else torch.ones_like(packed["tokens"])
        logits = _hf_forward(cfg, model, input_ids=packed["tokens"], position_ids=packed["position_ids"],
                             attention_mask=mask).logits
        ref["packed_no_mask"] = _per_token_ce(logits, packed)
    return cfg, batches, collated, results, ref


def _max_grad_diff(got: dict, expected: dict, names, allow_zero: bool = False) -> float:
    """Largest |got - expected| over the named tensors, relative to each tensor's largest entry.
    ``allow_zero``: a tensor with an all-zero expected gradient (an expert no token chose) must be
    all zero too."""
    worst = 0.0
    for name in names:
        scale = float(expected[name].abs().max())
        if scale == 0 and allow_zero:
            assert float(got[name].abs().max()) == 0.0, f"{name}: gradient where none is expected"
            continue
        assert scale > 0, f"{name}: zero reference gradient, nothing compared"
        worst = max(worst, float((got[name] - expected[name]).abs().max()) / scale)
    return worst


def _grad_names(cfg) -> list[str]:
    names = ["embedding.word_embeddings.weight", "decoder.layers.0.self_attention.linear_qkv.weight",
             "decoder.layers.3.self_attention.linear_proj.weight", "decoder.final_layernorm.weight"]
    if cfg.is_moe:
        names += ["decoder.layers.1.mlp.router.weight", "decoder.layers.2.mlp.experts.local_experts.0.linear_fc1.weight"]
    else:
        names += ["decoder.layers.2.mlp.linear_fc1.weight", "output_layer.weight"]
    return names


def test_sft_loss_and_grads_match_hf(run):
    from moetrain.models.weight_maps import RankCoord, ShardLayout, hf_to_mcore

    cfg, batches, collated, results, ref = run
    got = results["batch"]
    # The last prompt token predicts the first reply token: every reply token is trained.
    trained = sum(SAMPLES[n][1] for n in ("A", "Z", "B"))
    assert got["num_tokens"] == trained == int(collated["batch"]["loss_mask"].sum())
    torch.testing.assert_close(got["report"], torch.tensor([got["loss_sum"], float(trained)]))
    loss = got["loss_sum"] / got["num_tokens"]
    assert loss == pytest.approx(ref["loss"], rel=LOSS_RTOL), f"SFT loss {loss} vs HF {ref['loss']}"

    expected = hf_to_mcore(cfg, ref["grads"], ShardLayout(tp=1, pp=1, ep=1), RankCoord(0, 0, 0))
    mean_grads = {n: g / got["num_tokens"] for n, g in got["grads"].items()}
    names = _grad_names(cfg)
    assert _max_grad_diff(mean_grads, expected, names) <= GRAD_TOL


def test_packed_samples_are_isolated(run):
    cfg, batches, collated, results, ref = run
    unpacked = _sample_sums(results["unpacked"]["per_token"], collated["unpacked"],
                            [r["attention_mask"] for r in batches["unpacked"][0]])
    want = {"A": unpacked[0][1], "B": unpacked[1][1]}
    for name, ids in (("packed", {"A": 1, "B": 2}), ("packed_with_empty", {"A": 1, "Z": 2, "B": 3})):
        (sums,) = _sample_sums(results[name]["per_token"], collated[name], [batches[name][0][0]["attention_mask"]])
        for sample, k in ids.items():
            if sample == "Z":
                assert sums[k] == 0.0
                continue
            assert sums[k] == pytest.approx(want[sample], rel=LOSS_RTOL), f"{name}: sample {sample}"
        assert results[name]["loss_sum"] == pytest.approx(want["A"] + want["B"], rel=LOSS_RTOL)
        assert results[name]["num_tokens"] == results["unpacked"]["num_tokens"]
        # Summed over the samples, gradients equal those of the separate rows (every tensor).
        assert _max_grad_diff(results[name]["grads"], results["unpacked"]["grads"],
                              results["unpacked"]["grads"], allow_zero=True) <= GRAD_TOL, name


def test_packing_without_isolation_mask_leaks_and_positions_match_hf(run):
    cfg, batches, collated, results, ref = run
    unpacked = _sample_sums(results["unpacked"]["per_token"], collated["unpacked"],
                            [r["attention_mask"] for r in batches["unpacked"][0]])
    sid = [batches["packed"][0][0]["attention_mask"]]
    for name in ("packed_no_mask", "packed_plain"):
        (sums,) = _sample_sums(results[name]["per_token"], collated[name], sid)
        assert sums[1] == pytest.approx(unpacked[0][1], rel=LOSS_RTOL), f"{name}: A comes first, causal"
    # --reset-position-ids without --reset-attention-mask: B attends to A.
    (sums,) = _sample_sums(results["packed_no_mask"]["per_token"], collated["packed_no_mask"], sid)
    rel = abs(sums[2] - unpacked[1][1]) / unpacked[1][1]
    assert rel > LEAK_RTOL, f"B attends to A, yet its loss moved by only {rel:.1e}"
    # Reset positions matter once B sees A (so the rotary hook acted) ...
    (reset,), (plain,) = (_sample_sums(results[n]["per_token"], collated[n], sid) for n in
                          ("packed_no_mask", "packed_plain"))
    assert abs(reset[2] - plain[2]) / plain[2] > LEAK_RTOL
    # ... and equal HF's position_ids.
    got = results["packed_no_mask"]["per_token"] * collated["packed_no_mask"]["loss_mask"]
    torch.testing.assert_close(got, ref["packed_no_mask"], rtol=1e-4, atol=1e-5)


def test_zero_target_row_contributes_nothing(run):
    cfg, batches, collated, results, ref = run
    with_empty, without = results["batch"], results["unpacked"]
    assert float(collated["batch"]["loss_mask"][1].sum()) == 0.0
    assert float(with_empty["per_token"][1].mul(collated["batch"]["loss_mask"][1]).abs().sum()) == 0.0
    assert with_empty["num_tokens"] == without["num_tokens"]
    assert with_empty["loss_sum"] == pytest.approx(without["loss_sum"], rel=LOSS_RTOL)
    assert math.isfinite(with_empty["loss_sum"] / with_empty["num_tokens"])
    assert _max_grad_diff(with_empty["grads"], without["grads"], without["grads"], allow_zero=True) <= GRAD_TOL

    empty = results["all_empty"]
    assert torch.isfinite(empty["per_token"]).all()
    assert empty["loss_sum"] == 0.0 and empty["num_tokens"] == 0
    assert all(float(g.abs().max()) == 0.0 for g in empty["grads"].values())
    # The step's reported loss: sum / max(tokens, 1) (moetrain.training.step) stays finite.
    assert empty["loss_sum"] / max(empty["num_tokens"], 1) == 0.0


def test_isolation_mask_small_example():
    sample_ids = torch.tensor([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 0, 0]])
    allowed = torch.tensor([  # row 0: [A A | B B B | pad], True = may attend
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ], dtype=torch.bool)
    mask = isolation_mask(sample_ids)
    assert mask.shape == (2, 1, 6, 6) and mask.dtype == torch.bool
    assert torch.equal(mask[0, 0], ~allowed)
    allowed_padded = torch.tensor([  # row 1: [A A A A | pad pad]
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(mask[1, 0], ~allowed_padded)
    assert not mask.all(dim=-1).any(), "a fully masked query row would give NaN attention"

    # The collate: next-token targets only inside a sample, positions restarting per sample.
    row = {"input_ids": np.array([5, 6, 7, 8, 9]), "labels": np.array([-100, 6, -100, 8, 9]),
           "attention_mask": np.array([1, 1, 2, 2, 2])}
    batch = Collate(seq_length=8, pad_id=0, reset_attention_mask=True, reset_position_ids=True)([row])
    assert batch["tokens"].tolist() == [[5, 6, 7, 8, 9, 0, 0, 0]]
    assert batch["loss_mask"].tolist() == [[1, 0, 1, 1, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[6, 0, 8, 9, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2, 0, 1, 2]]
    assert torch.equal(batch["attention_mask"], isolation_mask(torch.tensor([[1, 1, 2, 2, 2, 0, 0, 0]])))
