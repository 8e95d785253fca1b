"""LoRA fine-tuning through the trainer (grok1-tiny, CPU ranks): adapters on attention and every
expert, base frozen and loaded from --load, adapter-only checkpoints that resume exactly, and the
same losses under TP2 + SP, PP2 and EP2 as on one rank (fp32 reduction order only)."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import pytest
from lora_training_ranks import ITERS, layout_lora, single_rank_lora
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
    single = run_on_ranks(1, single_rank_lora, (data, tok, str(tmp)), timeout=300)[0]
    layouts = run_on_ranks(2, layout_lora, (data, tok, str(tmp), LAYOUTS), timeout=400)
    for r in layouts:
        assert r == layouts[0], "ranks disagree on the losses"
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


def test_lora_resume_is_exact(runs):
    single, _, _ = runs
    assert single["resumed"] == single["ref"][3:]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_lora_layouts_equal_one_rank(runs, layout):
    single, layouts, _ = runs
    assert layouts[layout] == pytest.approx(single["ref"], rel=PARITY_RTOL), (layout, layouts[layout], single["ref"])


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
