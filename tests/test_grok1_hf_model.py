"""The HF-compatible Grok-1 model: numerics, every component matters, save/load round trip."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from hf_reference import init_grok1_weights  # tests/ is on sys.path under pytest
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from moetrain.models import get_flavor
from moetrain.models.grok1.hf_config import Grok1Config
from moetrain.models.grok1.hf_model import Grok1ModelForCausalLM
from moetrain.models.hf_config import to_hf_config


def _model(**overrides) -> Grok1ModelForCausalLM:
    cfg = to_hf_config(get_flavor("grok1-tiny"))
    for k, v in overrides.items():
        setattr(cfg, k, v)
    model = Grok1ModelForCausalLM(cfg).eval()
    init_grok1_weights(model, seed=0, std=0.05)
    return model


IDS = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(1))


def _reference_logits(model: Grok1ModelForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    """An independent, loop-style restatement of the Grok-1 equations (see DESIGN.md)."""
    c, sd = model.config, model.state_dict()

    def norm(x, name):
        return sd[name] * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c.rms_norm_eps)

    s, hd, nh, ng = ids.shape[1], c.head_dim, c.num_attention_heads, c.num_key_value_heads
    pos = torch.arange(s, dtype=torch.float32)[:, None]
    ang = pos * c.rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float32) / hd)  # [s, hd/2]
    cos, sin = ang.cos().repeat(1, 2), ang.sin().repeat(1, 2)

    def rope(x):  # [s, hd]
        return x * cos + torch.cat([-x[:, hd // 2:], x[:, : hd // 2]], -1) * sin

    out = []
    for b in range(ids.shape[0]):
        x = sd["model.embed_tokens.weight"][ids[b]] * c.embedding_multiplier_scale  # [s, h]
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            a = norm(x, p + "pre_attn_norm.scale")
            q, k, v = (a @ sd[p + f"attn.{n}_proj.weight"].T for n in "qkv")
            heads = []
            for hq in range(nh):
                g = hq // (nh // ng)
                qh, kh, vh = rope(q[:, hq * hd:(hq + 1) * hd]), rope(k[:, g * hd:(g + 1) * hd]), v[:, g * hd:(g + 1) * hd]
                sc = qh @ kh.T * c.attn_output_multiplier
                sc = c.max_attn_value * torch.tanh(sc / c.max_attn_value)
                sc = sc.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
                heads.append(sc.softmax(-1) @ vh)
            x = x + norm(torch.cat(heads, -1) @ sd[p + "attn.o_proj.weight"].T, p + "post_attn_norm.scale")
            m = norm(x, p + "pre_moe_norm.scale")
            probs = (m @ sd[p + "moe_block.gate.weight"].T).softmax(-1)  # [s, E]
            y = torch.zeros_like(m)
            for t in range(s):
                for e in probs[t].topk(c.num_experts_per_tok).indices.tolist():
                    w = {n: sd[p + f"moe_block.experts.{e}.{n}.weight"] for n in ("linear", "linear_v", "linear_1")}
                    hidden = F.gelu(m[t] @ w["linear"].T) * (m[t] @ w["linear_v"].T)
                    y[t] += probs[t, e] * (hidden @ w["linear_1"].T)  # no renormalisation
            x = x + norm(y, p + "post_moe_norm.scale")
        out.append(norm(x, "model.norm.scale") @ sd["lm_head.weight"].T * c.output_multiplier_scale)
    return torch.stack(out)


def test_forward_matches_reference_equations_and_loss_is_finite():
    model = _model()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.attn.q_proj.weight.mul_(10.0)  # large scores: the soft-cap regime is exercised too
        out = model(IDS, labels=IDS)
        ref = _reference_logits(model, IDS)
    torch.testing.assert_close(out.logits, ref, rtol=1e-5, atol=2e-5)
    assert torch.isfinite(out.loss)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 512), IDS[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


def test_fresh_model_is_all_zero_like_the_hf_port():
    model = Grok1ModelForCausalLM(to_hf_config(get_flavor("grok1-tiny")))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.count_nonzero(model(IDS).logits) == 0


def test_save_and_load_round_trip(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "grok-1" and config["architectures"] == ["Grok1ModelForCausalLM"]
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert "model.layers.3.moe_block.experts.3.linear_1.weight" in f.keys()
    for cls in (Grok1ModelForCausalLM, AutoModelForCausalLM):
        loaded = cls.from_pretrained(tmp_path).eval()
        assert type(loaded) is Grok1ModelForCausalLM
        with torch.no_grad():
            assert torch.equal(loaded(IDS).logits, model(IDS).logits)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def test_output_multiplier_scales_logits_exactly():
    base, half = _logits(_model()), _logits(_model(output_multiplier_scale=0.5 * 0.5773502691896257))
    torch.testing.assert_close(half, 0.5 * base)


@pytest.mark.parametrize("override", [
    {"embedding_multiplier_scale": 1.0},
    {"gelu_approximate": "tanh"},
    {"attn_output_multiplier": 0.5},
    {"rope_theta": 500.0},
])
def test_config_numerics_change_the_logits(override):
    assert not torch.allclose(_logits(_model()), _logits(_model(**override)), atol=1e-5)


def test_soft_cap_changes_the_logits_when_scores_are_large():
    def big_scores(model):
        with torch.no_grad():
            for layer in model.model.layers:
                layer.attn.q_proj.weight.mul_(20.0)  # scores well beyond the cap of 30
        return model

    capped, uncapped = _logits(big_scores(_model())), _logits(big_scores(_model(max_attn_value=1e6)))
    assert not torch.allclose(capped, uncapped, atol=1e-3)


@pytest.mark.parametrize("norm", ["pre_attn_norm", "post_attn_norm", "pre_moe_norm", "post_moe_norm", "final"])
def test_each_norm_matters(norm):
    model = _model()
    base = _logits(model)
    param = model.model.norm.scale if norm == "final" else getattr(model.model.layers[1], norm).scale
    with torch.no_grad():
        param.mul_(torch.linspace(0.5, 2.0, param.numel()))
    assert not torch.allclose(_logits(model), base, atol=1e-5)


def test_causal_and_router_aux_loss():
    model = _model(output_router_logits=True, router_aux_loss_coef=0.01)
    future, past = IDS.clone(), IDS.clone()
    future[:, -1] = (future[:, -1] + 1) % 512
    past[:, 0] = (past[:, 0] + 1) % 512
    with torch.no_grad():
        out, out_future, out_past = model(IDS, labels=IDS), model(future), model(past)
    # Causality: changing the last token moves no earlier logit beyond fp32 noise (the MoE groups
    # other tokens per expert, so GEMM shapes and summation order may differ: not bit-equality),
    # while changing the first token moves the later logits far more than that noise.
    scale = out.logits.abs().max()
    noise = 64 * torch.finfo(torch.float32).eps * scale
    future_moved = (out_future.logits[:, :-1] - out.logits[:, :-1]).abs().max()
    past_moved = (out_past.logits[:, 1:] - out.logits[:, 1:]).abs().max()
    assert future_moved <= noise, f"the future leaks into past logits: {future_moved} > {noise}"
    assert past_moved > 1000 * noise, f"changing the past barely moves later logits: {past_moved}"
    assert len(out.router_logits) == 4 and out.router_logits[0].shape == (24, 4)
    ce = F.cross_entropy(out.logits[:, :-1].reshape(-1, 512), IDS[:, 1:].reshape(-1))
    assert math.isfinite(out.aux_loss.item()) and out.aux_loss > 0
    torch.testing.assert_close(out.loss, ce + 0.01 * out.aux_loss)


def test_config_defaults_are_the_release():
    c = Grok1Config()
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (
        6144, 64, 48, 8, 128)
    assert c.max_attn_value == 30.0 and c.tie_word_embeddings and c.gelu_approximate == "none"


def test_loads_from_a_directory_of_config_and_safetensors(tmp_path):
    # The converter's output: config.json + safetensors written from mcore_to_hf (no tied lm_head).
    from safetensors.torch import save_file

    from moetrain.models.weight_maps import RankCoord, ShardLayout, all_coords, hf_to_mcore, mcore_to_hf

    model, cfg, layout = _model(), get_flavor("grok1-tiny"), ShardLayout(tp=2, pp=2, ep=2)
    shards = {c: hf_to_mcore(cfg, model.state_dict(), layout, c) for c in all_coords(layout)}
    assert RankCoord(1, 1, 1) in shards
    save_file(mcore_to_hf(cfg, shards, layout), str(tmp_path / "model.safetensors"))
    model.config.to_json_file(str(tmp_path / "config.json"))
    loaded = Grok1ModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(_logits(loaded), _logits(model))
