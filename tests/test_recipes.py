"""Every shell recipe launches a configuration that passes moetrain's validation for its world size.

Each recipe runs with PYTHON pointing at a stub that records the command line instead of starting
torchrun; the recorded moetrain.pretrain flags then go through the same validation as a real launch
(layout vs world size and model, batch sizes, schedule), with the data and tokenizer files (which
users provide) stood in for. This catches a recipe whose TP x PP does not divide its device count,
a flag name that does not exist, or a flavor that was renamed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from moetrain.training import validate
from moetrain.training.cli import parse_args

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.relative_to(REPO) for pattern in ("*/pretrain_*.sh", "*/tune_*.sh")
                 for p in (REPO / "examples").glob(pattern))

STUB = """import json, os, sys
with open(os.environ["RECORD"], "w") as f:
    json.dump(sys.argv[1:], f)
"""


def _recorded_launch(recipe: Path, tmp_path: Path) -> tuple[list[str], dict]:
    stub = tmp_path / "python_stub.py"
    stub.write_text(STUB)
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {stub} \"$@\"\n")
    wrapper.chmod(0o755)
    record = tmp_path / "argv.json"
    env = {**os.environ, "PYTHON": str(wrapper), "RECORD": str(record)}
    subprocess.run(["bash", str(REPO / recipe)], cwd=tmp_path, env=env, check=True)
    import json

    argv = json.loads(record.read_text())
    # [-m torch.distributed.run, --nproc-per-node N, --nnodes M, ..., -m moetrain.pretrain, flags...]
    launcher = dict(zip(argv[2:argv.index("-m", 2):2], argv[3:argv.index("-m", 2):2]))
    module = argv.index("-m", 2) + 1  # moetrain.pretrain or moetrain.finetune.sft
    assert argv[module] in ("moetrain.pretrain", "moetrain.finetune.sft", "moetrain.inference.generate"), argv[module]
    flags = argv[module + 1:]
    if argv[module] == "moetrain.finetune.sft" and "--is-instruction-dataset" not in flags:
        flags.append("--is-instruction-dataset")  # what moetrain.finetune.sft adds
    return flags, launcher


def stand_in_user_files(monkeypatch) -> None:
    """The user's corpus, tokenizer and (for tune_* recipes) converted checkpoint: only their
    presence and shape are checked at launch, so they are stood in for."""
    monkeypatch.setattr(validate, "_check_data", lambda cfg: None)
    monkeypatch.setattr(validate, "_check_instruction_data", lambda cfg, seq_length: None)
    monkeypatch.setattr(validate, "_tokenizer", lambda cfg: None)
    monkeypatch.setattr(validate.converted_load, "is_converted_checkpoint", lambda root: True)
    monkeypatch.setattr(validate.converted_load, "check_converted", lambda root, model_cfg, dims: None)


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_configuration_is_valid(recipe, tmp_path, monkeypatch):
    flags, launcher = _recorded_launch(recipe, tmp_path)
    world = int(launcher["--nproc-per-node"]) * int(launcher["--nnodes"])
    cfg = parse_args(flags)
    stand_in_user_files(monkeypatch)
    run = validate.resolve(cfg, world_size=world)
    assert run.dims.world_size == world
    assert run.num_microbatches >= 1


GENERATE_RECIPES = sorted(p.relative_to(REPO) for p in (REPO / "examples").glob("*/generate_*.sh"))


class _StandInTokenizer:
    """One token per word: prompts are checked for length and emptiness only."""

    vocab_size, eos, bos = 100, None, None

    def encode_text(self, text):
        return list(range(len(text.split())))

    def detokenize(self, ids):
        return " ".join(map(str, ids))


@pytest.mark.parametrize("recipe", GENERATE_RECIPES, ids=[r.stem for r in GENERATE_RECIPES])
def test_generate_recipe_is_valid_and_its_weights_fit(recipe, tmp_path, monkeypatch):
    """The generate recipes' layout holds their flavor at their world size, and the weights per
    device (bf16, or fp32 for tiny) fit the device memory their header states."""
    import re

    from moetrain.inference import options
    from moetrain.inference.loading import CheckpointInfo
    from moetrain.models import get_flavor
    from moetrain.models.param_count import padded_vocab_size, parameters_per_rank

    flags, launcher = _recorded_launch(recipe, tmp_path)
    world = int(launcher["--nproc-per-node"]) * int(launcher["--nnodes"])
    cfg = options.parse_args(flags)
    monkeypatch.setattr(options, "inspect_checkpoint",
                        lambda load, flavor: CheckpointInfo(Path(load), "converted", get_flavor(flavor), {}))
    monkeypatch.setattr(options, "_tokenizer", lambda cfg, info: _StandInTokenizer())
    prepared = options.prepare(cfg, world_size=world)
    d, model = prepared.dims, prepared.checkpoint.model_cfg
    assert d.world_size == world
    ranks = parameters_per_rank(model, d.tp, d.pp, d.ep, etp=1, padded_vocab_size=padded_vocab_size(
        model.vocab_size, d.tp))
    weight_gb = max(r.total for r in ranks) * (2 if cfg.dtype != "fp32" else 4) / 1e9
    header = (REPO / recipe).read_text().splitlines()[1]
    stated = re.search(r"(\d+) GB devices", header)
    if stated:  # the big recipes: weights plus room for activations and the KV cache
        assert weight_gb < 0.8 * int(stated.group(1)), f"{weight_gb:.1f} GB of weights per device"
