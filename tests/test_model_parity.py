"""moetrain's Llama, Mixtral and Grok-1 against the Hugging Face reference, on 1 rank and under
TP2, PP2, EP2 and TP2 x PP2 x EP2 (fp32, tiny random models, gloo ranks on the CPU).

Each layout loads the *same* HF weights through the weight map, so logits, loss and the gradients
of a few named weights must match the HF model to float tolerance.
"""

from __future__ import annotations

import pytest
import torch
from hf_reference import hf_model
from model_parity_ranks import logits_loss_grads  # tests/ is on sys.path under pytest

from moetrain.testing.spawn import run_on_ranks

pytestmark = pytest.mark.multirank

LAYOUTS = {  # name: (tp, pp, ep, world)
    "1rank": (1, 1, 1, 1),
    "tp2": (2, 1, 1, 2),
    "pp2": (1, 2, 1, 2),
    "ep2": (1, 1, 2, 2),
    "tp2pp2ep2": (2, 2, 2, 8),
}
SEQ, BATCH = 16, 2


def _batch(vocab: int):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, vocab, (BATCH, SEQ), generator=g)
    return tokens, torch.roll(tokens, -1, dims=1)


GRAD_NAMES = {  # local mcore names whose grads we compare (TP-split, so complete on each rank)
    "llama": ("layers.0.self_attention.linear_qkv.weight", "mlp.linear_fc2.weight"),
    "moe": ("layers.0.self_attention.linear_qkv.weight", "mlp.experts.local_experts.0.linear_fc1.weight"),
}


def _reference(cfg, model, tokens, labels):
    model.zero_grad()
    out = model(input_ids=tokens)
    logits = out.logits.float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    loss.backward()
    return logits.detach(), float(loss), dict(model.named_parameters())


@pytest.fixture(scope="module", params=["llama-tiny", "mixtral-tiny", "grok1-tiny"])
def reference(request, tmp_path_factory):
    cfg, model = hf_model(request.param)
    tokens, labels = _batch(cfg.vocab_size)
    logits, loss, params = _reference(cfg, model, tokens, labels)
    path = tmp_path_factory.mktemp("hf") / f"{cfg.name}.pt"
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, path)
    return cfg, model, path, tokens, labels, logits, loss, params


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
def test_logits_loss_and_grads_match_hf(reference, layout_name):
    cfg, model, path, tokens, labels, ref_logits, ref_loss, params = reference
    tp, pp, ep, world = LAYOUTS[layout_name]
    if ep > 1 and not cfg.is_moe:
        ep, world = 1, world // 2 if world > 2 else world
        if layout_name == "ep2":
            pytest.skip("expert parallelism needs an MoE model (llama-tiny is dense)")
    grad_names = GRAD_NAMES["moe" if cfg.is_moe else "llama"]
    results = run_on_ranks(world, logits_loss_grads,
                           (cfg, tp, pp, ep, str(path), tokens, labels, grad_names), timeout=240)
    logits = [r[1] for r in results if r[1] is not None]
    losses = [r[2] for r in results if r[2] is not None]
    assert logits and losses, "no rank returned logits / loss"
    for got in logits:
        torch.testing.assert_close(got, ref_logits, rtol=1e-4, atol=1e-4)
    for got in losses:
        assert got == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)

    # Gradients of named weights: the HF grads pushed through the same weight map must equal the
    # local grads of each rank.
    from moetrain.models.weight_maps import ShardLayout, hf_to_mcore

    layout = ShardLayout(tp=tp, pp=pp, ep=ep)
    hf_grads = {k: (p.grad if p.grad is not None else torch.zeros_like(p)) for k, p in params.items()}
    # What megatron's grad reduction would produce: dense grads are identical on DP replicas
    # (average them); expert grads are partial per rank of the expert-data-parallel group, and every
    # DP replica fed the same batch, so their sum counts the batch dp times.
    dp = world // (tp * pp)
    reduced: dict[tuple, torch.Tensor] = {}
    counts: dict[tuple, int] = {}
    for coord, _, _, grads in results:
        for name, (grad, is_expert) in grads.items():
            key = (coord.pp_rank, coord.ep_rank, name) if is_expert else (coord.tp_rank, coord.pp_rank, name)
            reduced[key] = reduced.get(key, 0) + grad
            counts[key] = counts.get(key, 0) + 1
    checked = 0
    for coord, _, _, grads in results:
        expected = hf_to_mcore(cfg, hf_grads, layout, coord)
        for name, (_, is_expert) in grads.items():
            key = (coord.pp_rank, coord.ep_rank, name) if is_expert else (coord.tp_rank, coord.pp_rank, name)
            got = reduced[key] / (dp if is_expert else counts[key])
            # Tolerance relative to the gradient's scale (tiny entries have no meaningful rtol).
            scale = float(expected[name].abs().max())
            assert float((got - expected[name]).abs().max()) <= 1e-4 * scale, f"{name}: gradient differs on {coord}"
            checked += 1
    assert checked >= len(grad_names), f"compared only {checked} gradients"


def test_grok1_parity_fails_without_softcap_multipliers_or_sandwich_norms(tmp_path):
    """The HF parity above would catch each of these being dropped: with the same weights, removing
    the soft-cap, either multiplier or either post (sandwich) norm moves the logits far outside the
    parity tolerance, while the full model stays inside it."""
    from model_parity_ranks import grok1_ablations

    cfg, model = hf_model("grok1-tiny")
    tokens, _ = _batch(cfg.vocab_size)
    with torch.no_grad():
        ref = model(input_ids=tokens).logits.float()
        scores_regime = _max_attention_score(model, tokens)
    # At |score| 10, 30*tanh(score/30) is already 0.36 below the raw score: the cap is active.
    assert scores_regime > 10.0, "inputs must reach the soft-cap regime for the check to mean anything"
    path = tmp_path / "grok.pt"
    torch.save(model.state_dict(), path)
    (results,) = run_on_ranks(1, grok1_ablations, (cfg, str(path), tokens), timeout=240)
    torch.testing.assert_close(results.pop("full"), ref, rtol=1e-4, atol=1e-4)
    for name, logits in results.items():
        diff = float((logits - ref).abs().max())
        # 10x the parity tolerance (atol 1e-4): the parity test would fail.
        assert diff > 1e-3, f"removing {name} changed the logits by only {diff:.2e}"


def _max_attention_score(model, tokens) -> float:
    """Largest |q·k * scale| of the first layer, from a hook on the HF attention's projections."""
    captured = {}
    attn = model.model.layers[0].attn
    hooks = [attn.q_proj.register_forward_hook(lambda m, a, o: captured.__setitem__("q", o)),
             attn.k_proj.register_forward_hook(lambda m, a, o: captured.__setitem__("k", o))]
    try:
        model(input_ids=tokens)
    finally:
        for h in hooks:
            h.remove()
    cfg = model.config
    hd = cfg.hidden_size // cfg.num_attention_heads if getattr(cfg, "head_dim", None) is None else cfg.head_dim
    q = captured["q"].view(*tokens.shape, -1, hd)[..., :1, :]
    k = captured["k"].view(*tokens.shape, -1, hd)[..., :1, :]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * cfg.attn_output_multiplier
    return float(scores.abs().max())
