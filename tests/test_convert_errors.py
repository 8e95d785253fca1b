"""The converter's refusals: each bad input is one clear error naming the tensor / file, and nothing
that looks like a checkpoint is left at --save-dir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from convert_fixtures import run, write_hf
from safetensors.torch import load_file, save_file

from moetrain.checkpoint_formats.errors import ConversionError
from moetrain.checkpoint_formats.hf_dir import HFDirSource
from moetrain.checkpoint_formats.legacy import (
    LegacyCheckpointError,
    is_legacy_checkpoint,
    load_rank_state_dict,
    read_legacy_meta,
)
from moetrain.models.weight_maps import RankCoord, ShardLayout

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def hf_src(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "llama"
    write_hf("llama-tiny", path)
    return path


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _shard_of(path: Path, name: str) -> Path:
    return path / json.loads((path / "model.safetensors.index.json").read_text())["weight_map"][name]


def test_missing_shard(hf_src, tmp_path):
    src = _copy(hf_src, tmp_path / "src")
    shard = _shard_of(src, "model.layers.1.mlp.up_proj.weight")
    shard.unlink()
    with pytest.raises(ConversionError, match=f"missing shard file .*{shard.name}"):
        run("llama-tiny", "hf", "mg", src, tmp_path / "out", tp=2)
    assert not (tmp_path / "out").exists()


def test_wrong_shape(hf_src, tmp_path):
    src = _copy(hf_src, tmp_path / "src")
    name = "model.layers.2.self_attn.k_proj.weight"
    shard = _shard_of(src, name)
    tensors = load_file(shard)
    tensors[name] = torch.zeros(8, 64)
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=f"tensor '{name}' in .*{shard.name}: shape \\(8, 64\\) contradicts"):
        run("llama-tiny", "hf", "mg", src, tmp_path / "out")


def test_unknown_tensor(hf_src, tmp_path):
    src = _copy(hf_src, tmp_path / "src")
    name = "model.layers.0.self_attn.q_proj.weight"
    shard = _shard_of(src, name)
    tensors = load_file(shard)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(8)
    save_file(tensors, shard, metadata={"format": "pt"})
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.0.self_attn.rotary_emb.inv_freq"] = shard.name
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match="'model.layers.0.self_attn.rotary_emb.inv_freq' in .* maps to no"):
        run("llama-tiny", "hf", "mg", src, tmp_path / "out")


def test_missing_tensor_and_wrong_model_type(hf_src, tmp_path):
    src = _copy(hf_src, tmp_path / "src")
    with pytest.raises(ConversionError, match="--model-type-hf mixtral does not match"):
        convert_type = "mixtral"
        from moetrain.checkpoint_formats.convert import convert
        from moetrain.checkpoint_formats.options import ConvertOptions

        convert(ConvertOptions(convert_type, "hf", "mg", src, tmp_path / "out", progress=False))
    name = "model.norm.weight"
    shard = _shard_of(src, name)
    tensors = load_file(shard)
    del tensors[name]
    save_file(tensors, shard, metadata={"format": "pt"}) if tensors else shard.unlink()
    index = json.loads((src / "model.safetensors.index.json").read_text())
    del index["weight_map"][name]
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match="'model.norm.weight' is missing"):
        run("llama-tiny", "hf", "mg", src, tmp_path / "out")


def test_bin_files_read_weights_only(hf_src, tmp_path):
    """.bin checkpoints are read with weights_only=True: a pickled object is refused, not executed."""
    src = tmp_path / "bin"
    src.mkdir()
    (src / "config.json").write_text((hf_src / "config.json").read_text())
    tensors = {}
    for f in hf_src.glob("*.safetensors"):
        tensors.update(load_file(f))
    torch.save(tensors, src / "pytorch_model.bin")
    run("llama-tiny", "hf", "mg", src, tmp_path / "ok")
    torch.save({"evil": object()}, src / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="weights_only=True"):
        HFDirSource(src)


def test_non_empty_save_dir_refused(hf_src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(ConversionError, match="not empty; pass --overwrite"):
        run("llama-tiny", "hf", "mg", hf_src, out)
    assert (out / "keep.txt").read_text() == "user data"
    run("llama-tiny", "hf", "mg", hf_src, out, overwrite=True)
    assert is_legacy_checkpoint(out) and not (out / "keep.txt").exists()


def test_interrupted_conversion_leaves_nothing(hf_src, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = HFDirSource.get

    def flaky(self, name):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-way
        return original(self, name)

    monkeypatch.setattr(HFDirSource, "get", flaky)
    with pytest.raises(KeyboardInterrupt):
        run("llama-tiny", "hf", "mg", hf_src, tmp_path / "out", tp=2, pp=2)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []  # the temporary sibling is gone too


def test_layout_mismatch_tells_to_reshard(hf_src, tmp_path):
    run("llama-tiny", "hf", "mg", hf_src, tmp_path / "mg", tp=2)
    layout = read_legacy_meta(tmp_path / "mg").layout
    sd, _ = load_rank_state_dict(tmp_path / "mg", RankCoord(1, 0, 0), layout)
    assert sd["embedding.word_embeddings.weight"].shape == (256, 64)  # 512 (a multiple of 128*2), split in 2
    with pytest.raises(LegacyCheckpointError, match="re-shard it first: .*--target-pipeline-parallel-size 2"):
        load_rank_state_dict(tmp_path / "mg", RankCoord(0, 0, 0), ShardLayout(tp=1, pp=2, padded_vocab_size=512))


def test_cli_error_is_one_line_exit_2(hf_src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("x")
    proc = subprocess.run([sys.executable, str(ROOT / "ckpt_converters" / "convert_ckpt.py"), "--model-type-hf",
                           "llama2", "--load-model-type", "hf", "--save-model-type", "mg", "--load-dir", str(hf_src),
                           "--save-dir", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("convert_ckpt.py: error:") and "--overwrite" in lines[-1]
    assert "Traceback" not in proc.stderr
