"""LoRA fine-tuning through the trainer (grok1-tiny, CPU ranks): adapters on attention and every
expert, base frozen and loaded from --load, adapter-only checkpoints that resume exactly, the same
losses under TP2 + SP, PP2 and EP2 as on one rank (fp32 reduction order only), and adapters trained
at TP2 / EP2 that give the same logits loaded on one rank. (TP2 x PP2 x EP2 is one of the 8-rank
runs of tests/test_sft_training.py.)"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import pytest
from lora_training_ranks import ITERS, LORA, layout_lora, single_rank_lora
from test_sft_training import PARITY_RTOL, sft_data

from moetrain.testing.spawn import run_on_ranks

pytestmark = pytest.mark.multirank

LAYOUTS = {"tp2": ["--tensor-model-parallel-size", "2", "--sequence-parallel"],
           "pp2": ["--pipeline-model-parallel-size", "2"],
           "ep2": ["--expert-model-parallel-size", "2", "--use-distributed-optimizer"]}


@pytest.fixture(scope="module")
def runs():
    data, tok, _ = sft_data()
    tmp = Path(tempfile.mkdtemp(prefix="moetrain_lora_"))
    layouts = run_on_ranks(2, layout_lora, (data, tok, str(tmp), LAYOUTS), timeout=400)
    for r in layouts:
        assert r["losses"] == layouts[0]["losses"], "ranks disagree on the losses"
    single = run_on_ranks(1, single_rank_lora, (data, tok, str(tmp)), timeout=300)[0]
    yield single, layouts[0], tmp
    shutil.rmtree(tmp, ignore_errors=True)


def test_lora_trains_and_saves_adapters_only(runs):
    single, _, tmp = runs
    ref = single["ref"]
    assert len(ref) == ITERS and all(math.isfinite(x) for x in ref) and ref[-1] < ref[0], ref
    from torch.distributed.checkpoint import FileSystemReader

    keys = FileSystemReader(str(tmp / "lora" / "iter_0000006")).read_metadata().state_dict_metadata
    model_keys = [k for k in keys if not k.startswith(("optimizer", "opt_param_scheduler"))
                  and "_extra_state" not in k and k not in ("iteration", "consumed_train_samples")]
    assert model_keys and all("_lora." in k for k in model_keys), model_keys[:5]


def test_lora_with_full_recompute_trains_as_without(runs):
    # The frozen embedding's output is made to require grad, so recompute has an input to differentiate.
    single, _, _ = runs
    assert single["recompute"] == pytest.approx(single["ref"], rel=1e-6)


def test_lora_resume_is_exact(runs):
    single, _, _ = runs
    assert single["resumed"] == single["ref"][3:]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_lora_layouts_equal_one_rank(runs, layout):
    single, layouts, _ = runs
    got = layouts["losses"][layout]
    assert got == pytest.approx(single["ref"], rel=PARITY_RTOL), (layout, got, single["ref"])


@pytest.mark.parametrize("layout", ["tp2", "ep2"])
def test_adapter_trained_at_tp2_or_ep2_gives_the_same_logits_on_one_rank(runs, layout):
    single, layouts, _ = runs
    at_layout, on_one = layouts["logits"][layout], single["logits"][layout]
    worst = float((at_layout - on_one).abs().max() / on_one.abs().max())
    assert worst < 1e-5, (layout, worst)  # fp32: TP splits the reductions


def test_adapter_of_another_rank_or_target_set_is_refused_before_any_rank_starts(runs, capsys):
    from test_training_config import _fails

    _, _, tmp = runs
    data, tok, _ = sft_data()
    base = ["--model", "grok1-tiny", "--data-path", data["unpacked"], "--is-instruction-dataset",
            "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", tok, "--load", str(tmp / "base"),
            "--lora-load", str(tmp / "lora_ep2")]
    err = _fails([*base, "--lora-target-modules", "linear_qkv", "--lora-r", "4"], capsys, world=1)
    assert "adapts linear_qkv linear_proj linear_fc1 linear_fc2, the run asks for --lora-target-modules " \
           "linear_qkv" in err, err
    err = _fails([*base, *LORA[:5], "--lora-r", "8"], capsys, world=1)
    assert "has rank 4, the run asks for --lora-r 8; pass --lora-r 4" in err, err


@pytest.mark.parametrize("extra,message", [
    (["--lora-target-modules", "linear_qkv", "q_proj"], "--lora-target-modules: unknown q_proj; choose from linear_qkv"),
    (["--lora-load", "somewhere"], "--lora-load somewhere needs --lora-target-modules"),
    (["--lora-target-modules", "linear_qkv", "--lora-load", "somewhere"], "--lora-load somewhere needs --load"),
    (["--lora-target-modules", "linear_qkv", "--lora-r", "0"], "--lora-r 0: the adapter rank must be at least 1"),
])
def test_lora_bad_flags_fail_before_any_rank_starts(extra, message, capsys):
    from test_training_config import _fails

    data, tok, _ = sft_data()
    capsys.readouterr()  # the preprocessing's own output, when this test builds the data
    err = _fails(["--model", "grok1-tiny", "--data-path", data["unpacked"], "--is-instruction-dataset",
                  "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", tok, *extra], capsys, world=1)
    assert message in err, err


def test_lora_needs_instruction_data(capsys):
    from test_training_config import _fails

    err = _fails(["--model", "grok1-tiny", "--mock-data", "--lora-target-modules", "linear_qkv"], capsys, world=1)
    assert "LoRA fine-tunes on instruction data" in err, err
