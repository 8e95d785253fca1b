"""ParallelDims: every bad layout fails with its own message; dp / expert-dp; megatron-core's groups."""

from __future__ import annotations

import pytest
from device_ranks import layout_groups  # tests/ is on sys.path under pytest

from moetrain.models import get_flavor
from moetrain.parallel import LayoutError, ParallelDims, parse_num_layer_list
from moetrain.testing.spawn import run_on_ranks

MOE = get_flavor("mixtral-tiny")  # 4 layers, 4 heads, 2 KV heads, 4 experts
DENSE = get_flavor("llama-tiny")


def _only_error(dims: ParallelDims, model, dist_backend: str = "gloo") -> str:
    """The message of the one problem this layout has (validate_model lists every problem)."""
    with pytest.raises(LayoutError) as info:
        dims.validate_model(model, dist_backend)
    message = str(info.value)
    assert message.count("\n  - ") == 1, f"expected exactly one problem, got:\n{message}"
    assert repr(model.name) in message
    return message


# ---------------------------------------------------------------- layout alone
def test_world_not_divisible_by_tp_pp():
    with pytest.raises(LayoutError, match=r"world size 6 is not divisible by tensor-parallel 2 x "
                                          r"pipeline-parallel 2 = 4; launch a multiple of 4 processes"):
        ParallelDims(world_size=6, tp=2, pp=2)


def test_sizes_must_be_positive():
    with pytest.raises(LayoutError, match=r"--pipeline-model-parallel-size must be >= 1, got 0"):
        ParallelDims(world_size=2, pp=0)


def test_expert_group_must_divide_dp_times_tp():
    with pytest.raises(LayoutError, match=r"--expert-model-parallel-size 4 x --expert-tensor-parallel-size 1 = 4 "
                                          r"must divide data-parallel 1 x tensor-parallel 2 = 2"):
        ParallelDims(world_size=4, tp=2, pp=2, ep=4)


def test_vpp_needs_pp():
    with pytest.raises(LayoutError, match=r"virtual pipeline stages need --pipeline-model-parallel-size >= 2"):
        ParallelDims(world_size=2, vpp=2)


def test_num_layer_list_wrong_length():
    with pytest.raises(LayoutError, match=r"--num-layer-list has 3 entries but --pipeline-model-parallel-size is 2"):
        ParallelDims(world_size=2, pp=2, num_layer_list=(1, 1, 2))


def test_num_layer_list_with_vpp():
    with pytest.raises(LayoutError, match=r"cannot be combined with virtual pipeline"):
        ParallelDims(world_size=2, pp=2, vpp=2, num_layer_list=(1, 3))
    # vpp 1 means "no virtual stages" everywhere else (initialize, TransformerConfig)
    assert ParallelDims(world_size=2, pp=2, vpp=1, num_layer_list=(1, 3)).layers_per_stage(4) == (1, 3)


# ---------------------------------------------------------------- layout x model
def test_heads_not_divisible_by_tp():
    # Heads are a multiple of the KV heads, so indivisible heads imply indivisible KV heads too.
    with pytest.raises(LayoutError) as info:
        ParallelDims(world_size=2, tp=2).validate_model(DENSE.replace(num_attention_heads=3, num_query_groups=1,
                                                                      kv_channels=16))
    assert "--num-attention-heads 3 is not divisible by --tensor-model-parallel-size 2" in str(info.value)


def test_kv_heads_not_divisible_by_tp():
    msg = _only_error(ParallelDims(world_size=2, tp=2), DENSE.replace(num_query_groups=1))
    assert "--num-query-groups (KV heads) 1 is not divisible by --tensor-model-parallel-size 2" in msg


def test_experts_not_divisible_by_ep():
    msg = _only_error(ParallelDims(world_size=3, ep=3), MOE)
    assert "--num-experts 4 is not divisible by --expert-model-parallel-size 3" in msg


def test_ep_on_dense_model():
    msg = _only_error(ParallelDims(world_size=2, ep=2), DENSE)
    assert "--expert-model-parallel-size 2 needs an MoE model (--num-experts)" in msg


def test_layers_not_divisible_by_pp():
    msg = _only_error(ParallelDims(world_size=2, pp=2), DENSE.replace(num_layers=5))
    assert "--num-layers 5 is not divisible by pipeline stages 2; use --num-layer-list" in msg
    msg = _only_error(ParallelDims(world_size=2, pp=2, vpp=2), DENSE.replace(num_layers=6))
    assert "--num-layers 6 is not divisible by pipeline stages 2 x virtual 2" in msg
    ParallelDims(world_size=2, pp=2, num_layer_list=(2, 3)).validate_model(DENSE.replace(num_layers=5))


def test_num_layer_list_wrong_sum():
    msg = _only_error(ParallelDims(world_size=2, pp=2, num_layer_list=(1, 2)), DENSE)
    assert "--num-layer-list 1,2 sums to 3 but --num-layers is 4" in msg


def test_moe_tp_needs_sequence_parallel():
    msg = _only_error(ParallelDims(world_size=2, tp=2), MOE)
    assert "MoE with --tensor-model-parallel-size > 1 requires --sequence-parallel" in msg
    ParallelDims(world_size=2, tp=2, sequence_parallel=True).validate_model(MOE)
    ParallelDims(world_size=2, tp=2).validate_model(DENSE)  # dense TP without SP is fine


def test_expert_tp_on_gloo():
    dims = ParallelDims(world_size=4, tp=2, ep=2, expert_tp=2, sequence_parallel=True)
    msg = _only_error(dims, MOE, "gloo")
    assert "--expert-tensor-parallel-size > 1 needs uneven all_gather, which gloo lacks" in msg
    dims.validate_model(MOE, "nccl")
    dims.validate_model(MOE, "hccl")


def test_all_problems_listed_together():
    with pytest.raises(LayoutError) as info:
        ParallelDims(world_size=2, tp=2).validate_model(MOE.replace(num_layers=3, num_query_groups=1))
    assert str(info.value).count("\n  - ") == 2  # KV heads and MoE-without-SP (3 layers, pp 1 is fine)


# ---------------------------------------------------------------- derived sizes
@pytest.mark.parametrize(("kwargs", "dp", "expert_dp"), [
    (dict(world_size=8, tp=2, pp=2, ep=2), 2, 2),
    (dict(world_size=16, tp=4, pp=2, ep=2), 2, 4),
    (dict(world_size=8, tp=2, ep=4), 4, 2),
    (dict(world_size=8, tp=2, ep=2, expert_tp=2), 4, 2),
    (dict(world_size=1), 1, 1),
    (dict(world_size=6, pp=3), 2, 2),
])
def test_dp_and_expert_dp(kwargs, dp, expert_dp):
    dims = ParallelDims(**kwargs)
    assert dims.dp == dp and dims.expert_dp == expert_dp
    assert dims.tp * dims.pp * dims.dp == dims.world_size
    assert dims.ep * dims.expert_tp * dims.expert_dp * dims.pp == dims.world_size


def test_layers_per_stage_and_describe():
    assert ParallelDims(world_size=4, pp=2).layers_per_stage(8) == (4, 4)
    assert ParallelDims(world_size=2, pp=2, num_layer_list=(3, 5)).layers_per_stage(8) == (3, 5)
    text = ParallelDims(world_size=8, tp=2, pp=2, ep=2, sequence_parallel=True).describe()
    assert text == "world 8 = TP2 x PP2 x DP2; EP2 +SP"


def test_parse_num_layer_list():
    assert parse_num_layer_list("3,5") == (3, 5)
    assert parse_num_layer_list(" 3, 5 ") == (3, 5)
    assert parse_num_layer_list("8") == (8,)
    assert parse_num_layer_list(None) is None and parse_num_layer_list("") is None
    for bad in ("3,a", "3.5,4", "3,,5"):
        with pytest.raises(LayoutError, match="must be comma-separated integers"):
            parse_num_layer_list(bad)
    with pytest.raises(LayoutError, match="every stage needs at least one layer"):
        parse_num_layer_list("4,0")


# ---------------------------------------------------------------- megatron-core's groups (8 ranks)
@pytest.mark.multirank
def test_initialize_tp2_pp2_ep2_on_8_ranks():
    results = run_on_ranks(8, layout_groups, args=(2, 2, 2), timeout=240)
    for rank, groups in enumerate(results):
        # megatron-core's default order tp-cp-ep-dp-pp: rank = tp_rank + 2 * dp_rank + 4 * pp_rank
        tp_rank, dp_rank, pp_rank = rank % 2, (rank // 2) % 2, rank // 4
        assert groups["tp"] == (2, tp_rank, [rank - tp_rank, rank - tp_rank + 1]), rank
        assert groups["pp"] == (2, pp_rank, [rank % 4, rank % 4 + 4]), rank
        assert groups["dp"] == (2, dp_rank, [rank - 2 * dp_rank, rank - 2 * dp_rank + 2]), rank
        # expert side, order tp-ep-dp with expert-TP 1: within a stage of 4 ranks,
        # rank = ep_rank + 2 * expert_dp_rank (the EP group coincides with the TP group here)
        ep_rank, edp_rank = rank % 2, (rank // 2) % 2
        assert groups["etp"] == (1, 0), rank
        assert groups["ep"] == (2, ep_rank, [rank - ep_rank, rank - ep_rank + 1]), rank
        assert groups["edp"] == (2, edp_rank, [rank - 2 * edp_rank, rank - 2 * edp_rank + 2]), rank
