"""GroupedExperts' checkpoint contract without collectives: SequentialMLP's state-dict names, and
dist-checkpoint tensors that tile SequentialMLP's global layout for any EP x expert-TP rank.

(The numerics run in tests/test_model_parity.py: logits and gradients equal to HF under TP / PP / EP;
tests/test_old_checkpoints.py resumes a checkpoint written by the SequentialMLP-era code.)
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory
from megatron.core.transformer.mlp import MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec

from moetrain.models.common.activations import GatedActivation
from moetrain.models.common.experts import GroupedExperts, per_expert_items

H, FFN, LOCAL = 8, 12, 2


class _Group:
    def __init__(self, rank: int, size: int) -> None:
        self._rank, self._size = rank, size

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size


def _experts(ep_rank=0, ep=1, tp_rank=0, etp=1, dp_rank=0) -> GroupedExperts:
    config = SimpleNamespace(fp8=None, fp4=None, add_bias_linear=False, moe_ffn_hidden_size=FFN, hidden_size=H,
                             params_dtype=torch.float32, perform_initialization=False, moe_apply_probs_on_input=False)
    subs = MLPSubmodules(activation_func=ModuleSpec(module=GatedActivation, params={"activation": "swiglu"}))
    groups = SimpleNamespace(ep=_Group(ep_rank, ep), expt_tp=_Group(tp_rank, etp), expt_dp=_Group(dp_rank, 1))
    module = GroupedExperts(LOCAL, config, subs, pg_collection=groups)
    with torch.no_grad():
        module.weight1.copy_(torch.arange(module.weight1.numel(), dtype=torch.float32).view_as(module.weight1))
        module.weight2.copy_(-torch.arange(module.weight2.numel(), dtype=torch.float32).view_as(module.weight2))
    return module


def test_state_dict_speaks_sequential_mlp_names_and_round_trips():
    module = _experts()
    sd = module.state_dict()
    assert sorted(sd) == [f"local_experts.{j}.linear_fc{i}.weight" for j in range(LOCAL) for i in (1, 2)]
    assert sd["local_experts.1.linear_fc1.weight"].shape == (2 * FFN, H)  # nn.Linear [out, in]
    assert torch.equal(sd["local_experts.1.linear_fc2.weight"], module.weight2[1])
    other = _experts()
    with torch.no_grad():
        other.weight1.zero_(), other.weight2.zero_()
    other.load_state_dict(sd)
    assert torch.equal(other.weight1, module.weight1) and torch.equal(other.weight2, module.weight2)
    # The stacked names (what dist-checkpointing hands back) load too.
    other.load_state_dict({"weight1": module.weight1.detach() * 2, "weight2": module.weight2.detach()})
    assert torch.equal(other.weight1, module.weight1 * 2)


def test_load_reports_missing_unexpected_and_mismatched_experts_by_name():
    module = _experts()
    sd = module.state_dict()
    del sd["local_experts.1.linear_fc2.weight"]
    sd["local_experts.2.linear_fc1.weight"] = torch.zeros(2 * FFN, H)  # an expert this rank does not hold
    result = module.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["local_experts.1.linear_fc2.weight"]
    assert result.unexpected_keys == ["local_experts.2.linear_fc1.weight"]
    with pytest.raises(RuntimeError, match=r"size mismatch for local_experts.0.linear_fc1.weight.*\(24, 9\)"):
        module.load_state_dict({**module.state_dict(), "local_experts.0.linear_fc1.weight": torch.zeros(24, 9)})


def _tiles(etp: int, ep: int):
    """Every (global offset, shape, data) chunk of fc1 and fc2 over all EP x expert-TP ranks."""
    layer_axis = ((0, 3, 5),)  # layer 3 of 5, as TransformerBlock prepends it
    chunks = {"fc1": [], "fc2": []}
    for ep_rank in range(ep):
        for tp_rank in range(etp):
            module = _experts(ep_rank, ep, tp_rank, etp)
            sd = module.sharded_state_dict("decoder.layers.mlp.experts.", layer_axis)
            fc1, fc2 = sd["decoder.layers.mlp.experts.weight1"], sd["decoder.layers.mlp.experts.weight2"]
            assert isinstance(fc1, ShardedTensorFactory) and fc1.data is module.weight1  # the param itself
            assert fc2.data is module.weight2
            for part in fc1.build_fn(fc1.key, fc1.data, fc1.replica_id, None):
                chunks["fc1"].append((module, tp_rank, part))
            chunks["fc2"].append((module, tp_rank, fc2))
    return chunks


@pytest.mark.parametrize("etp,ep", [(1, 1), (1, 2), (2, 1), (2, 2)])
def test_dist_checkpoint_tensors_tile_sequential_mlps_global_layout(etp, ep):
    chunks = _tiles(etp, ep)
    experts = LOCAL * ep
    fc1_global = torch.full((5, experts, 2 * FFN, H), float("nan"))
    for _, _, sh in chunks["fc1"]:
        assert sh.key == "decoder.layers.mlp.experts.experts.linear_fc1.weight"
        assert sh.global_shape == (5, experts, 2 * FFN, H)
        region = tuple(slice(o, o + n) for o, n in zip(sh.global_offset, (1, *sh.local_shape)))
        assert torch.isnan(fc1_global[region]).all(), "two chunks overlap"
        fc1_global[region] = sh.data.unsqueeze(0)
    assert not torch.isnan(fc1_global[3]).any() and torch.isnan(fc1_global[:3]).all()
    # Global rows are [gate of all expert-TP ranks; up of all]: rank r's gate rows sit at r * f/etp.
    f_local = FFN // etp
    for module, tp_rank, _ in chunks["fc1"]:
        e0 = module.ep_group.rank() * LOCAL
        gate, up = module.weight1[:, :f_local], module.weight1[:, f_local:]
        assert torch.equal(fc1_global[3, e0:e0 + LOCAL, tp_rank * f_local:(tp_rank + 1) * f_local], gate)
        assert torch.equal(fc1_global[3, e0:e0 + LOCAL, FFN + tp_rank * f_local:FFN + (tp_rank + 1) * f_local], up)
    for module, tp_rank, sh in chunks["fc2"]:
        assert sh.key == "decoder.layers.mlp.experts.experts.linear_fc2.weight"
        assert sh.global_shape == (5, experts, H, FFN)
        assert sh.global_offset == (3, module.ep_group.rank() * LOCAL, 0, tp_rank * f_local)


def test_per_expert_items_names_slices_like_the_checkpoint():
    w = torch.randn(3, 4, 5)
    items = per_expert_items("decoder.layers.0.mlp.experts.weight1", w)
    assert [n for n, _ in items] == [f"decoder.layers.0.mlp.experts.local_experts.{j}.linear_fc1.weight" for j in range(3)]
    assert torch.equal(items[2][1], w[2])
    assert per_expert_items("decoder.layers.0.mlp.router.weight", w) == [("decoder.layers.0.mlp.router.weight", w)]
