"""A converted checkpoint trains, and a trained one converts back (issue 6 x issue 5).

HF (mixtral-tiny, several safetensors shards) -> convert_ckpt hf->mg for TP2 x EP2 -> the trainer
loads it (2 ranks, sequence parallel, distributed optimizer) and trains with lr 0, saving its own
dist-checkpoint -> convert_ckpt mg->hf -> every tensor equals the original bit for bit. With lr 0
Adam changes nothing, so any difference would come from a mapping or a format.
"""

from __future__ import annotations

import math

import pytest
import torch
from convert_fixtures import read_hf_tensors, run, write_hf
from convert_train_ranks import train_from_converted
from test_training_e2e import demo_data

from moetrain.testing.spawn import run_on_ranks

pytestmark = pytest.mark.multirank


def test_converted_checkpoint_trains_then_converts_back_bit_exact(tmp_path):
    flavor = "mixtral-tiny"
    write_hf(flavor, tmp_path / "hf")
    run(flavor, "hf", "mg", tmp_path / "hf", tmp_path / "mg", tp=2, ep=2)
    data, tokenizer = demo_data()
    args = ["--model", flavor, "--data-path", data, "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", tokenizer, "--seq-length", "32", "--micro-batch-size", "1",
            "--global-batch-size", "2", "--train-iters", "2", "--lr", "0", "--min-lr", "0",
            "--eval-iters", "0", "--split", "98,2,0", "--tensor-model-parallel-size", "2",
            "--expert-model-parallel-size", "2", "--sequence-parallel", "--use-distributed-optimizer",
            "--load", str(tmp_path / "mg"), "--save", str(tmp_path / "trained"),
            "--log-dir", str(tmp_path / "logs"), "--no-tensorboard"]
    losses = run_on_ranks(2, train_from_converted, (args,), timeout=300)
    assert all(math.isfinite(x) for x in losses[0]) and len(losses[0]) == 2
    # lr 0: the weights are those of the HF model, so the first two losses are close (different batches).
    assert losses[0][0] == pytest.approx(losses[0][1], rel=0.2)

    run(flavor, "mg", "hf", tmp_path / "trained", tmp_path / "hf_back")
    original, back = read_hf_tensors(tmp_path / "hf"), read_hf_tensors(tmp_path / "hf_back")
    assert sorted(back) == sorted(original)
    for name, tensor in original.items():
        assert torch.equal(back[name], tensor), f"{name} changed through convert -> train(lr 0) -> convert"


def test_converted_checkpoint_from_another_model_or_layout_is_refused(tmp_path):
    from moetrain.config import ConfigError
    from moetrain.training.cli import parse_args
    from moetrain.training.validate import resolve

    flavor = "mixtral-tiny"
    write_hf(flavor, tmp_path / "hf")
    run(flavor, "hf", "mg", tmp_path / "hf", tmp_path / "mg", tp=2, ep=2)
    cfg = parse_args(["--model", flavor, "--train-iters", "0", "--load", str(tmp_path / "mg"),
                      "--global-batch-size", "1", "--micro-batch-size", "1"])
    with pytest.raises(ConfigError, match="re-shard it"):  # the run is 1 rank, the checkpoint TP2 x EP2
        resolve(cfg, world_size=1)
    ok = parse_args(["--model", flavor, "--train-iters", "0", "--load", str(tmp_path / "mg"), "--global-batch-size",
                     "1", "--micro-batch-size", "1", "--tensor-model-parallel-size", "2",
                     "--expert-model-parallel-size", "2", "--sequence-parallel"])
    assert resolve(ok, world_size=2).load_converted
    wrong = parse_args(["--model", "llama-tiny", "--train-iters", "0", "--load", str(tmp_path / "mg"),
                        "--global-batch-size", "1", "--micro-batch-size", "1"])
    with pytest.raises(ConfigError, match="incompatible model"):
        resolve(wrong, world_size=1)
