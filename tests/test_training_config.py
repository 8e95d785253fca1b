"""CLI, config files and the checks that fail before training starts (no process group needed)."""

from __future__ import annotations

import json
import os

import pytest

from moetrain.config import ConfigError
from moetrain.models import get_flavor
from moetrain.pretrain import main
from moetrain.training.cli import parse_args
from moetrain.training.lr_schedule import schedule_iters


@pytest.fixture(scope="module")
def data():
    from test_training_e2e import demo_data

    return demo_data()


def _base(data, *extra: str) -> list[str]:
    prefix, tok = data
    return ["--model", "grok1-tiny", "--data-path", prefix, "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", tok, "--seq-length", "32", "--micro-batch-size", "1", "--global-batch-size", "8",
            "--train-iters", "4", "--split", "98,2,0", *extra]


def _fails(argv, capsys, world: int = 8) -> str:
    old = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = str(world)
    try:
        rc = main(argv)
    finally:
        if old is None:
            os.environ.pop("WORLD_SIZE")
        else:
            os.environ["WORLD_SIZE"] = old
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("moetrain-pretrain: error: ") and "Traceback" not in err
    return err


def test_flags_keep_megatron_names_and_override_the_flavor():
    cfg = parse_args(["--model", "grok1-tiny", "--tensor-model-parallel-size", "2", "--sequence-parallel",
                      "--num-layers", "8", "--num-experts", "8", "--moe-router-topk", "1",
                      "--model-override", "hidden_size=128", "--data-path", "0.3", "a", "0.7", "b",
                      "--lr-decay-style", "linear", "--use-distributed-optimizer", "--no-tensorboard"])
    assert cfg.parallel.tensor_model_parallel_size == 2 and cfg.parallel.sequence_parallel
    assert cfg.model_overrides == {"num_layers": 8, "num_experts": 8, "moe_router_topk": 1, "hidden_size": 128}
    assert cfg.data.blend() == (["a", "b"], [0.3, 0.7])
    assert cfg.optimizer.use_distributed_optimizer and not cfg.logging.tensorboard


def test_config_file_yaml_and_toml_cli_wins(tmp_path):
    (tmp_path / "run.yaml").write_text(
        "model: llama-tiny\nparallel:\n  tensor-model-parallel-size: 2\nglobal_batch_size: 16\n"
        "num_layers: 2\ndata_path: 0.5 x 0.5 y\n")
    cfg = parse_args(["--config", str(tmp_path / "run.yaml"), "--global-batch-size", "32"])
    assert (cfg.model, cfg.parallel.tensor_model_parallel_size, cfg.training.global_batch_size) == ("llama-tiny", 2, 32)
    assert cfg.model_overrides == {"num_layers": 2} and cfg.data.blend() == (["x", "y"], [0.5, 0.5])
    (tmp_path / "run.toml").write_text('model = "mixtral-tiny"\n[optimizer]\nlr = 0.003\n')
    assert parse_args(["--config", str(tmp_path / "run.toml")]).optimizer.lr == 0.003
    (tmp_path / "bad.yaml").write_text("no_such_setting: 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'no_such_setting'"):
        parse_args(["--config", str(tmp_path / "bad.yaml")])


def test_layout_that_does_not_divide(data, capsys):
    err = _fails(_base(data, "--tensor-model-parallel-size", "3"), capsys)
    assert "world size 8 is not divisible by tensor-parallel 3" in err


def test_moe_tp_without_sequence_parallel(data, capsys):
    err = _fails(_base(data, "--tensor-model-parallel-size", "2"), capsys)
    assert "requires --sequence-parallel" in err


def test_missing_data_path(data, capsys, tmp_path):
    argv = _base(data)
    argv[argv.index("--data-path") + 1] = str(tmp_path / "nope_text_document")
    err = _fails(argv, capsys)
    assert "--data-path" in err and "nope_text_document.bin" in err and "not found" in err


def test_inconsistent_batch_sizes(data, capsys):
    err = _fails(_base(data, "--global-batch-size", "6", "--micro-batch-size", "2"), capsys, world=2)
    assert "--global-batch-size 6 is not divisible by --micro-batch-size 2 x data-parallel size 2" in err


def test_unknown_flavor_and_bad_override(data, capsys):
    assert "is not a known flavor" in _fails(_base(data, "--model", "gpt5"), capsys)
    assert "unknown model field" in _fails(_base(data, "--model-override", "hiden_size=3"), capsys)


def test_incompatible_checkpoint(data, capsys, tmp_path):
    saved = get_flavor("grok1-tiny", hidden_size=128, vocab_size=512).to_dict()
    (tmp_path / "iter_0000010").mkdir()
    (tmp_path / "iter_0000010" / "moetrain.json").write_text(json.dumps({"model_config": saved}))
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("10")
    err = _fails(_base(data, "--load", str(tmp_path)), capsys)
    assert "incompatible model" in err and "hidden_size: checkpoint 128 vs run 64" in err


def test_finetune_needs_a_checkpoint(data, capsys, tmp_path):
    assert "holds no checkpoint" in _fails(_base(data, "--load", str(tmp_path), "--finetune"), capsys)


def test_lr_schedule_resolution():
    cfg = parse_args(["--train-iters", "100", "--lr-warmup-fraction", "0.1"])
    assert schedule_iters(cfg.optimizer, 100) == (10, 100)
    with pytest.raises(ConfigError, match="warmup"):
        schedule_iters(parse_args(["--lr-warmup-iters", "100"]).optimizer, 100)
    with pytest.raises(ConfigError, match="--bf16 and --fp16"):
        parse_args(["--bf16", "--fp16"])
