"""HF -> Megatron (per-rank files) -> HF is bit-exact, and Megatron -> Megatron re-sharding is exact,
for tiny Llama, Mixtral and Grok-1 under TP2, PP2, EP2, TP2xPP2xEP2 and an uneven num_layer_list."""

from __future__ import annotations

import json

import pytest
import torch
from convert_fixtures import read_hf_tensors, run, write_hf  # tests/ is on sys.path under pytest

from moetrain.checkpoint_formats.legacy import is_legacy_checkpoint, load_rank_state_dict, read_legacy_meta
from moetrain.models.weight_maps import all_coords

FLAVORS = ["llama-tiny", "mixtral-tiny", "grok1-tiny"]
LAYOUTS = {  # name: (tp, pp, ep, num_layer_list)
    "tp2": (2, 1, 1, None),
    "pp2": (1, 2, 1, None),
    "ep2": (1, 1, 2, None),
    "tp2pp2ep2": (2, 2, 2, None),
    "pp2_nll_1_3": (1, 2, 1, (1, 3)),
}


@pytest.fixture(scope="module", params=FLAVORS)
def hf_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / request.param
    cfg, model = write_hf(request.param, path)
    assert len(list(path.glob("*.safetensors"))) > 3 and (path / "model.safetensors.index.json").is_file()
    return request.param, cfg, model, path


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_hf_mg_hf_bit_exact(hf_dir, layout, tmp_path):
    flavor, cfg, _, src = hf_dir
    tp, pp, ep, nll = LAYOUTS[layout]
    if ep > 1 and not cfg.is_moe:
        ep = 1
    report = run(flavor, "hf", "mg", src, tmp_path / "mg", tp=tp, pp=pp, ep=ep, num_layer_list=nll)
    assert is_legacy_checkpoint(tmp_path / "mg")
    meta = read_legacy_meta(tmp_path / "mg")
    assert (meta.layout.tp, meta.layout.pp, meta.layout.ep, meta.layout.num_layer_list) == (tp, pp, ep, nll)
    assert (tmp_path / "mg" / "latest_checkpointed_iteration.txt").read_text() == "1"
    assert report.tensors_written == sum(len(load_rank_state_dict(tmp_path / "mg", c)[0])
                                         for c in all_coords(meta.layout))
    back = run(flavor, "mg", "hf", tmp_path / "mg", tmp_path / "hf", max_shard_size="150KB")
    a, b = read_hf_tensors(src), read_hf_tensors(tmp_path / "hf")
    a.pop("lm_head.weight", None) if not cfg.untie_embeddings_and_output_weights else None
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert back.bytes_written == sum(t.numel() * t.element_size() for t in b.values())
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(b)


def test_mg_reshard_round_trip_exact(hf_dir, tmp_path):
    flavor, cfg, _, src = hf_dir
    ep = 2 if cfg.is_moe else 1
    run(flavor, "hf", "mg", src, tmp_path / "a", tp=2, pp=2, ep=ep)
    run(flavor, "mg", "mg", tmp_path / "a", tmp_path / "b", tp=1, pp=4, ep=1)
    run(flavor, "mg", "mg", tmp_path / "b", tmp_path / "c", tp=1, pp=2, ep=ep, num_layer_list=(3, 1))
    run(flavor, "mg", "mg", tmp_path / "c", tmp_path / "d", tp=2, pp=2, ep=ep)
    layout = read_legacy_meta(tmp_path / "a").layout
    assert read_legacy_meta(tmp_path / "d").layout == layout
    for coord in all_coords(layout):
        x, _ = load_rank_state_dict(tmp_path / "a", coord)
        y, _ = load_rank_state_dict(tmp_path / "d", coord, layout)
        assert set(x) == set(y)
        for k in x:
            assert torch.equal(x[k], y[k]), (coord, k)


def test_exported_hf_loads_and_matches(hf_dir, tmp_path):
    flavor, cfg, model, src = hf_dir
    ep = 2 if cfg.is_moe else 1
    run(flavor, "hf", "mg", src, tmp_path / "mg", tp=2, pp=2, ep=ep, params_dtype="fp32")
    run(flavor, "mg", "hf", tmp_path / "mg", tmp_path / "hf", max_shard_size="150KB")
    if cfg.family == "grok1":
        from moetrain.models.grok1.hf_model import Grok1ModelForCausalLM

        loaded = Grok1ModelForCausalLM.from_pretrained(tmp_path / "hf")
    else:
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager")
    loaded = loaded.float().eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=tokens).logits, model(input_ids=tokens).logits)
