"""``--mock-data`` (Megatron-LM's meaning): megatron-core's MockGPTDataset instead of ``--data-path``.

The flag checks and the dataset run in this process; one spawned 1-rank group trains grok1-tiny on
mock data with no data path and no tokenizer, saves, resumes from the middle checkpoint and must
reproduce the uninterrupted run's losses exactly (the same harness as tests/test_training_e2e.py).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from moetrain.config import ConfigError
from moetrain.testing.spawn import run_on_ranks
from moetrain.training.cli import parse_args

ITERS = 4
SAVE_AT = 2


def _args(tmp: Path, name: str, *extra: str) -> list[str]:
    return ["--model", "grok1-tiny", "--mock-data", "--seq-length", "32", "--micro-batch-size", "1",
            "--global-batch-size", "4", "--train-iters", str(ITERS), "--lr", "1e-2", "--min-lr", "1e-3",
            "--lr-warmup-iters", "1", "--moe-aux-loss-coeff", "0.01", "--eval-interval", "2", "--eval-iters", "1",
            "--log-dir", str(tmp / f"logs_{name}"), "--no-tensorboard", *extra]


# ---------------------------------------------------------------- checks before any rank starts
def test_mock_data_with_data_path_is_one_error_naming_both_flags():
    with pytest.raises(ConfigError) as err:
        parse_args(["--model", "grok1-tiny", "--mock-data", "--data-path", "data/corpus_text_document"])
    message = str(err.value)
    assert "--mock-data" in message and "--data-path data/corpus_text_document" in message
    assert "\n" not in message


def test_mock_data_needs_no_tokenizer_and_no_files():
    from moetrain.training.validate import resolve

    run = resolve(parse_args(["--model", "grok1-tiny", "--mock-data", "--train-iters", "3"]), world_size=1)
    assert run.tokenizer is None and run.model_cfg.vocab_size == 512  # the flavor's vocabulary
    # Without --mock-data the same command asks for data, and says how to do without.
    with pytest.raises(ConfigError, match="--data-path is required.*--mock-data"):
        resolve(parse_args(["--model", "grok1-tiny", "--train-iters", "3"]), world_size=1)


def test_mock_data_is_not_instruction_data():
    from moetrain.training.validate import resolve

    with pytest.raises(ConfigError, match="--mock-data.*--is-instruction-dataset"):
        resolve(parse_args(["--model", "grok1-tiny", "--mock-data", "--is-instruction-dataset"]), world_size=1)


def test_mock_datasets_are_megatron_cores_and_deterministic():
    from megatron.core.datasets.gpt_dataset import MockGPTDataset

    from moetrain.training.pretrain_data import DatasetSizes, build_datasets

    data = parse_args(["--mock-data"]).data
    sizes = DatasetSizes(train=8, valid=4, test=4)
    train, valid, test = build_datasets(data, None, 64, 1234, sizes, vocab_size=300)
    assert all(isinstance(d, MockGPTDataset) for d in (train, valid, test))
    again = build_datasets(data, None, 64, 1234, sizes, vocab_size=300)[0]
    other_seed = build_datasets(data, None, 64, 99, sizes, vocab_size=300)[0]
    rows = [train[k] for k in range(8)]
    for k, row in enumerate(rows):
        assert row["tokens"].shape == (64,) and int(row["tokens"].max()) < 300 and int(row["labels"].max()) < 300
        assert (row["tokens"] == again[k]["tokens"]).all()
    assert any((row["tokens"] != other_seed[k]["tokens"]).any() for k, row in enumerate(rows))
    # Documents end with the stand-in tokenizer's EOD, the last id of the model's vocabulary.
    assert any(int(t) == 299 for row in rows for t in row["tokens"])
    with pytest.raises(ValueError, match="vocab_size"):
        build_datasets(data, None, 64, 1234, sizes)


# ---------------------------------------------------------------- one spawned group: train, save, resume
def mock_resume_group(rank, world_size, tmp):
    from test_training_e2e import _allow_children, _copy_checkpoint, _losses

    from moetrain.pretrain import run_pretrain

    _allow_children()
    tmp = Path(tmp)
    ref = run_pretrain(_args(tmp, "ref", "--save", str(tmp / "ref"), "--save-interval", str(SAVE_AT)))
    ckpt = _copy_checkpoint(tmp / "ref", SAVE_AT, tmp / "resumed")
    resumed = run_pretrain(_args(tmp, "resumed", "--load", str(ckpt), "--save", str(ckpt)))
    evals = (tmp / "logs_ref" / "eval.jsonl").read_text().splitlines()
    return {"ref": _losses(ref), "resumed": _losses(resumed), "evals": len(evals),
            "metrics": len((tmp / "logs_ref" / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def mock_runs():
    tmp = Path(tempfile.mkdtemp(prefix="moetrain_mock_"))
    try:
        yield run_on_ranks(1, mock_resume_group, (str(tmp),), timeout=300)[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.multirank
def test_mock_data_trains_and_resumes_exactly(mock_runs):
    ref, resumed = mock_runs["ref"], mock_runs["resumed"]
    assert len(ref) == ITERS and all(loss == loss and loss > 0 for loss in ref)
    # Resuming from the middle checkpoint continues on the same mock samples: the same losses, bit for bit.
    assert resumed == ref[SAVE_AT:]
    assert mock_runs["metrics"] == ITERS and mock_runs["evals"] == ITERS // 2  # the valid split is mock too
