"""HF <-> megatron-core weight maps: bit-exact round trips under TP/PP/EP layouts, layouts, errors."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from transformers import LlamaForCausalLM, MixtralForCausalLM

from moetrain.models import ModelConfig, get_flavor
from moetrain.models.common.weight_map import shard
from moetrain.models.grok1.hf_model import Grok1ModelForCausalLM
from moetrain.models.hf_config import to_hf_config
from moetrain.models.llama.weight_map import mixtral_from_transformers, mixtral_to_transformers
from moetrain.models.weight_maps import (
    RankCoord,
    ShardLayout,
    WeightMapError,
    all_coords,
    expected_hf_keys,
    expected_mcore_keys,
    hf_to_mcore,
    mcore_to_hf,
    rule_table,
)

_MODEL_CLS = {"grok1-tiny": Grok1ModelForCausalLM, "llama-tiny": LlamaForCausalLM, "mixtral-tiny": MixtralForCausalLM}
LAYOUTS = {
    "tp2": ShardLayout(tp=2),
    "pp2": ShardLayout(pp=2),
    "ep2": ShardLayout(ep=2),
    "tp2pp2ep2": ShardLayout(tp=2, pp=2, ep=2),
    "pp2-list13": ShardLayout(pp=2, num_layer_list=(1, 3)),
    "tp2-padded": ShardLayout(tp=2, padded_vocab_size=520),
}
_CACHE: dict[str, tuple[torch.nn.Module, dict[str, torch.Tensor]]] = {}


def _model_and_weights(flavor: str):
    """A real HF model of the tiny flavor and a random state dict (distinct values everywhere)."""
    if flavor not in _CACHE:
        model = _MODEL_CLS[flavor](to_hf_config(get_flavor(flavor)))
        gen = torch.Generator().manual_seed(0)
        sd = {k: torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}
        if "lm_head.weight" in sd and model.config.tie_word_embeddings:
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
        _CACHE[flavor] = (model, sd)
    return _CACHE[flavor]


def _checkpoint_names(flavor: str, sd: dict) -> dict[str, torch.Tensor]:
    """The HF state dict as checkpoint names (Mixtral experts unfused); tied lm_head left out."""
    sd = mixtral_from_transformers(sd) if flavor == "mixtral-tiny" else dict(sd)
    if not get_flavor(flavor).untie_embeddings_and_output_weights:
        sd.pop("lm_head.weight", None)
    return sd


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize("flavor", ["grok1-tiny", "llama-tiny", "mixtral-tiny"])
def test_round_trip_is_bit_exact(flavor, layout_name):
    cfg, layout = get_flavor(flavor), LAYOUTS[layout_name]
    _, hf = _model_and_weights(flavor)
    shards = {c: hf_to_mcore(cfg, hf, layout, c) for c in all_coords(layout)}
    for coord, sd in shards.items():
        assert {k: tuple(v.shape) for k, v in sd.items()} == expected_mcore_keys(cfg, layout, coord)
    back = mcore_to_hf(cfg, shards, layout)
    expected = _checkpoint_names(flavor, hf)
    assert sorted(back) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(back[name], tensor), name


def test_expected_hf_keys_match_the_real_models(tmp_path):
    for flavor in ("grok1-tiny", "llama-tiny"):
        model, _ = _model_and_weights(flavor)
        real = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if not get_flavor(flavor).untie_embeddings_and_output_weights:
            real.pop("lm_head.weight")
        assert expected_hf_keys(get_flavor(flavor)) == real, flavor
    # Mixtral: the names are the checkpoint's, i.e. what transformers 5 writes to disk.
    model, sd = _model_and_weights("mixtral-tiny")
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        on_disk = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert expected_hf_keys(get_flavor("mixtral-tiny")) == on_disk
    # ...and the in-memory (fused) layout converts back exactly.
    fused = mixtral_to_transformers(mixtral_from_transformers(sd))
    assert sorted(fused) == sorted(sd) and all(torch.equal(fused[k], sd[k]) for k in sd)


def test_fused_qkv_layout_hand_built():
    # 4 query heads in 2 groups, head dim 1, hidden 3: rows are labelled by value.
    cfg = ModelConfig(name="qkv", family="llama", num_layers=1, hidden_size=3, ffn_hidden_size=2,
                      num_attention_heads=4, num_query_groups=2, kv_channels=1, vocab_size=4, seq_length=4)
    q, k, v = (torch.tensor(rows, dtype=torch.float32)[:, None].expand(-1, 3) for rows in
               ([1, 2, 3, 4], [10, 20], [100, 200]))
    rule = next(r for r in rule_table(cfg) if r.kind == "qkv")
    one = shard(rule, [q, k, v], cfg, ShardLayout(), 0)[:, 0].tolist()
    assert one == [1, 2, 10, 100, 3, 4, 20, 200]  # q1 q2 k1 v1 | q3 q4 k2 v2
    two = [shard(rule, [q, k, v], cfg, ShardLayout(tp=2), r)[:, 0].tolist() for r in range(2)]
    assert two == [[1, 2, 10, 100], [3, 4, 20, 200]]


def test_gated_fc1_and_row_parallel_layout():
    cfg, layout = get_flavor("llama-tiny"), ShardLayout(tp=2)
    _, hf = _model_and_weights("llama-tiny")
    gate, up = hf["model.layers.1.mlp.gate_proj.weight"], hf["model.layers.1.mlp.up_proj.weight"]
    down, o = hf["model.layers.1.mlp.down_proj.weight"], hf["model.layers.1.self_attn.o_proj.weight"]
    r1 = hf_to_mcore(cfg, hf, layout, RankCoord(1, 0, 0))
    assert torch.equal(r1["decoder.layers.1.mlp.linear_fc1.weight"], torch.cat([gate[64:], up[64:]]))
    assert torch.equal(r1["decoder.layers.1.mlp.linear_fc2.weight"], down[:, 64:])
    assert torch.equal(r1["decoder.layers.1.self_attention.linear_proj.weight"], o[:, 32:])


def test_experts_ep_and_pipeline_placement():
    cfg, layout = get_flavor("grok1-tiny"), ShardLayout(pp=2, ep=2, num_layer_list=(1, 3))
    _, hf = _model_and_weights("grok1-tiny")
    sd = hf_to_mcore(cfg, hf, layout, RankCoord(0, 1, 1))  # stage 1 holds global layers 1..3; EP rank 1
    fc1 = sd["decoder.layers.0.mlp.experts.local_experts.1.linear_fc1.weight"]  # global layer 1, expert 3
    e = "model.layers.1.moe_block.experts.3."
    assert torch.equal(fc1, torch.cat([hf[e + "linear.weight"], hf[e + "linear_v.weight"]]))
    assert torch.equal(sd["decoder.layers.2.post_mlp_layernorm.weight"], hf["model.layers.3.post_moe_norm.scale"])
    assert "embedding.word_embeddings.weight" not in sd and "decoder.layers.3.input_layernorm.weight" not in sd
    # Tied and PP>1: the last stage holds a copy of the embedding as output_layer.weight.
    assert torch.equal(sd["output_layer.weight"], hf["model.embed_tokens.weight"])
    assert "output_layer.weight" not in expected_mcore_keys(cfg, ShardLayout(), RankCoord(0, 0, 0))


def test_getter_reads_only_what_the_rank_needs():
    cfg, layout = get_flavor("mixtral-tiny"), ShardLayout(pp=2, ep=2)
    hf = _checkpoint_names("mixtral-tiny", _model_and_weights("mixtral-tiny")[1])
    read: list[str] = []
    hf_to_mcore(cfg, lambda name: read.append(name) or hf[name], layout, RankCoord(0, 1, 0))
    assert "model.embed_tokens.weight" not in read and "lm_head.weight" in read
    assert all(".layers.0." not in n and ".layers.1." not in n for n in read)
    assert not any(".experts.2." in n or ".experts.3." in n for n in read)  # EP rank 0 holds experts 0, 1


def test_vocab_padding_rows_are_zero():
    cfg, layout = get_flavor("llama-tiny"), ShardLayout(tp=2, padded_vocab_size=520)
    _, hf = _model_and_weights("llama-tiny")
    last = hf_to_mcore(cfg, hf, layout, RankCoord(1, 0, 0))["output_layer.weight"]
    assert last.shape == (260, 64) and torch.equal(last[-8:], torch.zeros(8, 64))
    assert torch.equal(last[:-8], hf["lm_head.weight"][260:])


def test_hf_errors_name_the_tensor():
    cfg, layout, coord = get_flavor("grok1-tiny"), ShardLayout(), RankCoord(0, 0, 0)
    hf = dict(_model_and_weights("grok1-tiny")[1])
    with pytest.raises(WeightMapError, match=r"model\.layers\.0\.attn\.bogus\.weight' maps to no"):
        hf_to_mcore(cfg, {**hf, "model.layers.0.attn.bogus.weight": torch.zeros(1)}, layout, coord)
    missing = {k: v for k, v in hf.items() if k != "model.layers.2.moe_block.experts.1.linear_v.weight"}
    with pytest.raises(WeightMapError, match=r"experts\.1\.linear_v\.weight' is missing"):
        hf_to_mcore(cfg, missing, layout, coord)
    with pytest.raises(WeightMapError, match=r"missing"):
        hf_to_mcore(cfg, missing.__getitem__, layout, coord)
    bad = {**hf, "model.layers.1.attn.k_proj.weight": torch.zeros(16, 64)}
    with pytest.raises(WeightMapError, match=r"k_proj\.weight': expected shape \(32, 64\), got \(16, 64\)"):
        hf_to_mcore(cfg, bad, layout, coord)
    with pytest.raises(WeightMapError, match=r"k_proj\.weight': expected shape"):
        hf_to_mcore(cfg, bad.__getitem__, layout, coord)
    untied = {**hf, "lm_head.weight": hf["model.embed_tokens.weight"] + 1}
    with pytest.raises(WeightMapError, match=r"'lm_head\.weight': embeddings are tied"):
        hf_to_mcore(cfg, untied, layout, coord)
    without_head = {k: v for k, v in hf.items() if k != "lm_head.weight"}
    assert hf_to_mcore(cfg, without_head, layout, coord).keys() == hf_to_mcore(cfg, hf, layout, coord).keys()


def test_mcore_errors_name_the_tensor():
    cfg, layout = get_flavor("llama-tiny"), ShardLayout(tp=2)
    _, hf = _model_and_weights("llama-tiny")
    shards = {c: hf_to_mcore(cfg, hf, layout, c) for c in all_coords(layout)}
    c0 = RankCoord(0, 0, 0)
    with pytest.raises(WeightMapError, match=r"'decoder\.layers\.0\.extra\.weight' maps to no HF"):
        mcore_to_hf(cfg, {**shards, c0: {**shards[c0], "decoder.layers.0.extra.weight": torch.zeros(1)}}, layout)
    name = "decoder.layers.3.self_attention.linear_proj.weight"
    with pytest.raises(WeightMapError, match=r"linear_proj\.weight' is missing"):
        mcore_to_hf(cfg, {**shards, c0: {k: v for k, v in shards[c0].items() if k != name}}, layout)
    with pytest.raises(WeightMapError, match=r"linear_proj\.weight': expected shape \(64, 32\), got \(64, 64\)"):
        mcore_to_hf(cfg, {**shards, c0: {**shards[c0], name: torch.zeros(64, 64)}}, layout)
    with pytest.raises(WeightMapError, match=r"needs rank RankCoord\(tp_rank=1"):
        mcore_to_hf(cfg, {c0: shards[c0]}, layout)
    with pytest.raises(WeightMapError, match="num_query_groups 2 is not divisible by tp 4"):
        hf_to_mcore(cfg, hf, ShardLayout(tp=4), c0)


def test_shards_do_not_pin_larger_storages():
    # torch.save writes a view's whole storage: one expert of a fused [E, ...] tensor must be copied.
    cfg, layout = get_flavor("mixtral-tiny"), ShardLayout(tp=2, ep=2)
    sd = hf_to_mcore(cfg, _model_and_weights("mixtral-tiny")[1], layout, RankCoord(1, 0, 1))
    for name, t in sd.items():
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), name
    with pytest.raises(WeightMapError, match="outside the layout"):
        expected_mcore_keys(cfg, layout, RankCoord(0, 1, 0))
