"""Planner: parameters and memory per rank, optimizer sharding, recompute, bubble, fit and suggestions."""

import json

import pytest

from moetrain.models.param_count import count_parameters
from moetrain.models.registry import get_flavor
from moetrain.planner import Layout, Setup, make_plan, memory_per_stage, plan_to_dict, plan_with_suggestions
from moetrain.planner.layouts import validate
from moetrain.planner.memory import GiB, layer_activation_bytes_per_token
from moetrain.planner.plan import pipeline_bubble

GROK40 = get_flavor("grok1-40b")
RECIPE = Layout(world_size=16, tp=4, pp=2, ep=2, sequence_parallel=True, use_distributed_optimizer=True)
SETUP = Setup(global_batch_size=128, micro_batch_size=1, seq_length=8192)


def test_recipe_plan_fits_64gb_and_predicts():
    plan = make_plan(GROK40, RECIPE, SETUP, device="910b2", device_memory_gib=64, assumed_mfu=0.4)
    assert plan.fits and not plan.warnings
    assert plan.microbatches == 64 and plan.bubble == pytest.approx(1 / 64)
    assert plan.peak_tflops == pytest.approx(376)
    # tokens/s/p is consistent with the step time it came from
    assert plan.tokens_per_sec_per_device == pytest.approx(128 * 8192 / (plan.step_seconds * 16))
    d = json.loads(json.dumps(plan_to_dict(plan)))
    assert d["fits"] and d["layout"]["dp"] == 2 and d["params"]["total"] == count_parameters(GROK40).total


def test_state_memory_per_param():
    # grok1-40b TP4 PP2 EP2 (expert-TP 4): DP 2, expert-DP 1
    stages = memory_per_stage(GROK40, RECIPE, SETUP)
    s0 = stages[0]
    assert s0.weights == 2 * s0.params.total and s0.gradients == 4 * s0.params.total
    assert s0.optimizer == pytest.approx(12 * (s0.params.dense / 2 + s0.params.expert / 1))


def test_distributed_optimizer_divides_by_dp():
    cfg = get_flavor("llama2-7b")
    base = Layout(world_size=16, tp=2, pp=2, sequence_parallel=True)  # DP 4
    setup = Setup(64, 1, 4096)
    plain = memory_per_stage(cfg, base, setup)
    dist = memory_per_stage(cfg, base.replace(use_distributed_optimizer=True), setup)
    for a, b in zip(plain, dist):
        assert b.optimizer == pytest.approx(a.optimizer / 4)
        assert (b.weights, b.gradients, b.activations) == (a.weights, a.gradients, a.activations)
    # MoE: expert state is sharded over expert-DP (16 / (etp 1 x ep 4 x pp 2) = 2), dense over DP 4
    lay = Layout(world_size=16, tp=2, pp=2, ep=4, expert_tp=1, sequence_parallel=True)
    p, d = (memory_per_stage(GROK40, lay.replace(use_distributed_optimizer=x), SETUP)[0] for x in (False, True))
    assert d.optimizer == pytest.approx(12 * (p.params.dense / 4 + p.params.expert / 2))


def test_recompute_and_sp_reduce_activations():
    acts = {}
    for rc in (None, "selective", "full"):
        for flash in (True, False):
            setup = Setup(128, 1, 8192, flash_attention=flash)
            acts[rc, flash] = memory_per_stage(GROK40, RECIPE.replace(recompute_granularity=rc), setup)[0].activations
    assert acts["full", True] < acts[None, True] / 5
    assert acts["selective", False] < acts[None, False]  # drops the s x s softmax
    assert acts["selective", True] == acts[None, True]  # nothing to drop with fused attention
    no_sp = Layout(world_size=8, tp=4, pp=2)
    with_sp = no_sp.replace(sequence_parallel=True)
    cfg = get_flavor("llama2-7b")
    assert layer_activation_bytes_per_token(cfg, with_sp, SETUP) < layer_activation_bytes_per_token(cfg, no_sp, SETUP)


def test_activation_hand_count_llama_tiny():
    # llama-tiny, TP 1, bf16, fused attention, per token per layer (as measured by saved-tensor hooks):
    # 2 norms x (fp32 input + fp32 normalised + fp32 rstd) = 2 x (8 x 64 + 4) = 1032;
    # QKV input + fc1 input 2 x 64 x 2 B = 256; Q and K, V expanded to 4 heads (64 + 2 x 64) x 2 = 384;
    # attention output 64 x 2 = 128; log-sum-exp 4 heads x 4 B = 16;
    # fc1 out (2 x 128) + act(gate) + act(gate) * up: 4 x 128 x 2 = 1024.
    assert layer_activation_bytes_per_token(get_flavor("llama-tiny"), Layout(1), Setup(1, 1, 64)) == 2840


def test_first_stage_holds_pp_microbatches():
    stages = memory_per_stage(GROK40, RECIPE, SETUP)
    assert [s.in_flight_microbatches for s in stages] == [2, 1]
    inter = memory_per_stage(GROK40, RECIPE.replace(vpp=2), SETUP)
    assert inter[0].in_flight_microbatches == pytest.approx(2 * (1 + 1 / 4))  # pp (1 + (pp-1)/(pp vpp))


def test_bubble():
    assert pipeline_bubble(RECIPE, 64) == pytest.approx(1 / 64)
    assert pipeline_bubble(RECIPE.replace(vpp=2), 64) == pytest.approx(1 / 128)
    assert pipeline_bubble(RECIPE.replace(pp=1), 8) == 0


def test_too_big_layout_warns_and_suggests():
    bad = Layout(world_size=16, tp=2, pp=1, ep=1, sequence_parallel=True)
    plan = plan_with_suggestions(GROK40, bad, SETUP, device="910b2", device_memory_gib=64, reserved_gib=2,
                                 max_tp=8)
    assert not plan.fits and any("does not fit" in w for w in plan.warnings)
    assert plan.suggestions
    for s in plan.suggestions:
        assert s.fits and s.layout.world_size == 16 and s.layout.tp <= 8


@pytest.mark.parametrize("layout,match", [
    (Layout(16, tp=3, pp=1), "does not divide the world size"),
    (Layout(16, tp=4, pp=2, ep=3, sequence_parallel=True), "experts"),
    (Layout(16, tp=4, pp=2, ep=2), "sequence-parallel"),
    (Layout(16, tp=4, pp=2, ep=2, sequence_parallel=True, num_layer_list=(5, 2)), "num-layer-list"),
    (Layout(16, tp=4, pp=2, ep=2, sequence_parallel=True, vpp=3), "vpp"),
])
def test_validation_messages(layout, match):
    with pytest.raises(ValueError, match=match):
        validate(GROK40, layout, 128, 1)
    with pytest.raises(ValueError, match="gbs"):
        validate(GROK40, RECIPE, 127, 1)


def test_cli(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("plan_cli", Path(__file__).parents[1] / "tools" / "plan.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "plan.json"
    argv = ["--model", "grok1-40b", "--tp", "4", "--pp", "2", "--ep", "2", "--nnodes", "2", "--nproc-per-node", "8",
            "--gbs", "128", "--mbs", "1", "--seq", "8192", "--device-memory", "64GB", "--device", "910b2",
            "--assumed-mfu", "0.4", "--use-distributed-optimizer", "--sequence-parallel", "--bf16", "--json", str(out)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "fits" in text and "tokens/s/p" in text
    data = json.loads(out.read_text())
    assert data["peak_memory_gib"] < 64 and data["stages"][0]["total_gib"] * GiB > 0
    assert cli.main(argv[:2] + ["--tp", "3"] + argv[4:]) == 2
    assert "does not divide" in capsys.readouterr().err


# --------------------------------------------------------------------------- LoRA
LINEARS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")


def test_lora_count_matches_peft_llama3_8b():
    from moetrain.models.param_count import count_lora_parameters

    # PEFT's print_trainable_parameters for Llama-3-8B, r 16 on q k v o gate up down: 41,943,040
    assert count_lora_parameters(get_flavor("llama3-8b"), 16, LINEARS) == 41_943_040


def test_lora_state_memory_per_param():
    from moetrain.planner.memory import LoraSetup

    cfg = get_flavor("grok1-314b")
    lay = Layout(world_size=64, tp=8, pp=8, ep=8, expert_tp=1, sequence_parallel=True, use_distributed_optimizer=True)
    setup = Setup(128, 1, 4096, lora=LoraSetup(16, (*LINEARS, "router")))
    full = memory_per_stage(cfg, lay, Setup(128, 1, 4096))
    for s, f in zip(memory_per_stage(cfg, lay, setup), full):
        a, st = s.adapters, s.lora_state
        assert a.dense and a.expert and a.router == s.params.layers * 8 * 6144
        # frozen base: bf16 weights only; adapters fp32 4 + 4 + 8 B (Adam over DP 1 / expert-DP 1)
        assert st.base_weights == f.weights and s.weights == f.weights + 4 * a.adapters
        assert s.gradients == 4 * a.adapters + 4 * a.router
        assert s.optimizer == 8 * (a.dense / lay.dp + a.expert / lay.expert_dp) + 12 * a.router / lay.dp
        assert s.trainable == a.total < s.params.total / 100
        # fp32 adapter inputs (full sequence under SP) outweigh what the frozen norms and output layer
        # no longer keep, but model state shrinks far more
        assert s.activations > f.activations and s.total < f.total / 2
    # the distributed optimizer shards adapter state, nothing else
    plain = memory_per_stage(cfg, lay.replace(use_distributed_optimizer=False, ep=4), setup)[0]
    dist = memory_per_stage(cfg, lay.replace(ep=4), setup)[0]  # expert-DP 2
    assert (dist.weights, dist.gradients) == (plain.weights, plain.gradients)
    assert dist.lora_state.adapter_optimizer == pytest.approx(
        8 * (plain.adapters.dense / 1 + plain.adapters.expert / 2))


def test_lora_on_experts_needs_expert_tp_1():
    from moetrain.planner.memory import LoraSetup

    lay = Layout(world_size=16, tp=4, pp=2, ep=2, sequence_parallel=True)  # expert-TP 4 (accelerator default)
    with pytest.raises(ValueError, match="--expert-tensor-parallel-size 1"):
        make_plan(GROK40, lay, Setup(128, 1, 8192, lora=LoraSetup()))
    # attention-only adapters do not touch the experts
    make_plan(GROK40, lay, Setup(128, 1, 8192, lora=LoraSetup(16, ("linear_qkv", "linear_proj"))))
    # suggestions for a LoRA run on experts keep expert-TP 1
    bad = Layout(world_size=16, tp=1, pp=1, ep=1, expert_tp=1)
    plan = plan_with_suggestions(GROK40, bad, Setup(128, 1, 8192, lora=LoraSetup()), device_memory_gib=64,
                                 reserved_gib=2, max_tp=8)
    assert plan.suggestions and all(s.layout.expert_tp == 1 for s in plan.suggestions)


def test_lora_cli(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    from moetrain.models.param_count import count_lora_parameters

    spec = importlib.util.spec_from_file_location("plan_cli", Path(__file__).parents[1] / "tools" / "plan.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "plan.json"
    argv = ["--model", "grok1-314b", "--tp", "8", "--pp", "8", "--ep", "8", "--etp", "1", "--nnodes", "8",
            "--gbs", "128", "--seq", "4096", "--device", "910b2", "--use-distributed-optimizer",
            "--sequence-parallel", "--bf16", "--lora-r", "16", "--json", str(out)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "LoRA r 16 on linear_qkv linear_proj linear_fc1 linear_fc2" in text and "base weights" in text
    data = json.loads(out.read_text())
    trainable = count_lora_parameters(get_flavor("grok1-314b"), 16, LINEARS)
    assert data["params"]["trainable"] == data["lora"]["trainable_params"] == trainable
    s0 = data["stages"][0]
    assert s0["lora"]["adapter_optimizer_gib"] == pytest.approx(s0["optimizer_gib"])
    assert s0["model_state_gib"] == pytest.approx(s0["weights_gib"] + s0["gradients_gib"] + s0["optimizer_gib"])
    # LoRA computes no weight gradients of the frozen base: less compute, the same model FLOPs
    assert data["compute_flops_per_step"] < 0.75 * data["flops_per_step"]
    assert cli.main(argv[:-2] + ["--lora-target-modules", "linear_qkv", "router"]) == 0
    assert "trainable router" in capsys.readouterr().out
