"""One layout, one set of rules: for the same flags and backend the trainer and the planner run the
same layout (expert-TP included) with the same per-rank parameters, and every shipped recipe fits
the devices it states (its header) according to the planner, for the layout the trainer will run
on NPU / GPU."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_recipes import (  # tests/ is on sys.path under pytest
    RECIPES,
    REPO,
    _recorded_launch,
    stand_in_user_files,
)

from moetrain.models.param_count import parameters_per_rank
from moetrain.parallel import default_expert_tp
from moetrain.planner import Layout, Setup, make_plan
from moetrain.planner.memory import LoraSetup
from moetrain.training import validate
from moetrain.training.cli import parse_args

BIG = [r for r in RECIPES if "tiny" not in r.stem]


def _trainer_run(recipe: Path, tmp_path: Path, monkeypatch, dist_backend: str):
    flags, launcher = _recorded_launch(recipe, tmp_path)
    world = int(launcher["--nproc-per-node"]) * int(launcher["--nnodes"])
    stand_in_user_files(monkeypatch)
    return validate.resolve(parse_args(flags), world_size=world, dist_backend=dist_backend)


def _planner_layout(run) -> Layout:
    # The planner from the same flags as the trainer (tools/plan.py accepts the Megatron names too).
    p, t = run.cfg.parallel, run.cfg.training
    return Layout(world_size=run.dims.world_size, tp=p.tensor_model_parallel_size,
                  pp=p.pipeline_model_parallel_size, ep=p.expert_model_parallel_size,
                  expert_tp=p.expert_tensor_parallel_size, vpp=run.dims.vpp, num_layer_list=run.dims.num_layer_list,
                  sequence_parallel=p.sequence_parallel,
                  use_distributed_optimizer=run.cfg.optimizer.use_distributed_optimizer,
                  recompute_granularity=t.recompute_granularity)


def _per_rank(cfg, dims):
    return parameters_per_rank(cfg, dims.tp, dims.pp, dims.ep,
                               list(dims.num_layer_list) if dims.num_layer_list else None, etp=dims.expert_tp)


@pytest.mark.parametrize("recipe", BIG, ids=[r.stem for r in BIG])
def test_trainer_and_planner_agree_on_accelerators(recipe, tmp_path, monkeypatch):
    run = _trainer_run(recipe, tmp_path, monkeypatch, "nccl")
    layout = _planner_layout(run)
    asked = run.cfg.parallel.expert_tensor_parallel_size  # a recipe may set it (tune_*: expert-TP 1)
    expected = asked if asked is not None else default_expert_tp(run.dims.tp, "nccl")
    assert run.dims.expert_tp == layout.expert_tp == expected
    if asked is None:
        assert expected == run.dims.tp
    assert (layout.tp, layout.pp, layout.ep, layout.dp, layout.expert_dp) == (
        run.dims.tp, run.dims.pp, run.dims.ep, run.dims.dp, run.dims.expert_dp)
    assert _per_rank(run.model_cfg, layout) == _per_rank(run.model_cfg, run.dims)


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_expert_tp_is_one_on_gloo(recipe, tmp_path, monkeypatch):
    run = _trainer_run(recipe, tmp_path, monkeypatch, "gloo")
    assert run.dims.expert_tp == 1


def _stated_memory_gib(recipe: Path) -> float:
    header = (REPO / recipe).read_text().splitlines()[1]
    match = re.search(r"(\d+) GB devices", header)
    assert match, f"{recipe}: the header must state the device memory it is sized for ('... 64 GB devices ...')"
    return float(match.group(1))


def _planner_setup(run) -> Setup:
    t, lora = run.cfg.training, run.cfg.lora
    # a LoRA recipe is planned as one: frozen base, fp32 adapters with gradients and Adam state
    return Setup(t.global_batch_size, t.micro_batch_size, run.seq_length, bf16=t.bf16,
                 lora=LoraSetup(lora.lora_r, tuple(lora.lora_target_modules)) if lora.enabled else None)


@pytest.mark.parametrize("recipe", BIG, ids=[r.stem for r in BIG])
def test_recipe_fits_its_stated_devices(recipe, tmp_path, monkeypatch):
    run = _trainer_run(recipe, tmp_path, monkeypatch, "nccl")
    plan = make_plan(run.model_cfg, _planner_layout(run), _planner_setup(run),
                     device_memory_gib=_stated_memory_gib(recipe), reserved_gib=2.0)
    assert plan.fits, f"{recipe}: {plan.peak_memory_gib:.1f} GiB per rank"
    # a header that quotes the planner quotes what it predicts now
    quoted = re.search(r"planner predicts ([\d.]+) GiB per rank", (REPO / recipe).read_text())
    if quoted:
        assert quoted.group(1) == f"{plan.peak_memory_gib:.1f}", f"{recipe}: re-quote {plan.peak_memory_gib:.1f} GiB"
