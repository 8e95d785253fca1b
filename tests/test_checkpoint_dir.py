"""moetrain/checkpoint_formats/directory.py: the one definition of a Megatron checkpoint directory
(pointer file, ``iter_*`` naming, ``moetrain.json``) that the trainer and the converter share."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

from moetrain.checkpoint_formats import legacy, mg_dir
from moetrain.checkpoint_formats.directory import (
    META_FILE,
    TRACKER_FILE,
    iter_dir_name,
    read_latest,
    read_meta,
    write_latest,
    write_meta,
)
from moetrain.checkpoint_formats.legacy import LegacyCheckpointError, read_tracker
from moetrain.config import ConfigError
from moetrain.training import checkpointing

PACKAGE = Path(__file__).resolve().parent.parent / "moetrain"


def test_names():
    assert TRACKER_FILE == "latest_checkpointed_iteration.txt" and META_FILE == "moetrain.json"
    assert iter_dir_name(10) == "iter_0000010" and iter_dir_name("7") == "iter_0000007"
    assert iter_dir_name("release") == "release"


def test_trainer_and_converter_use_the_one_definition():
    assert checkpointing.TRACKER_FILE is TRACKER_FILE and checkpointing.META_FILE is META_FILE
    assert checkpointing.iter_dir_name is iter_dir_name and legacy.iter_dir_name is iter_dir_name
    assert checkpointing.read_latest is read_latest and legacy.TRACKER_FILE is TRACKER_FILE
    assert mg_dir.iter_dir_name is iter_dir_name


def _code_strings(path: Path) -> list[str]:
    """String constants of a module, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_the_file_names_are_spelled_out_once():
    spelled = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for s in _code_strings(path):
            for name in (TRACKER_FILE, META_FILE):
                if name in s:
                    spelled.setdefault(name, set()).add(str(path.relative_to(PACKAGE)))
    assert spelled == {TRACKER_FILE: {"checkpoint_formats/directory.py"},
                       META_FILE: {"checkpoint_formats/directory.py"}}, (
        "use moetrain.checkpoint_formats.directory's TRACKER_FILE / META_FILE instead of the literal")


# ---------------------------------------------------------------- the pointer
def test_read_latest(tmp_path):
    assert read_latest(tmp_path) is None
    (tmp_path / TRACKER_FILE).write_text(" 12\n")
    assert read_latest(tmp_path) == 12
    (tmp_path / TRACKER_FILE).write_text("release")
    assert read_latest(tmp_path, allow_release=True) == "release"
    with pytest.raises(ConfigError, match=r"latest_checkpointed_iteration\.txt: expected an iteration number, "
                                          r"found 'release'"):
        read_latest(tmp_path)


def test_the_trainer_reads_only_iterations(tmp_path):
    assert checkpointing.read_latest(tmp_path) is None
    (tmp_path / TRACKER_FILE).write_text("abc")
    with pytest.raises(ConfigError, match="expected an iteration number, found 'abc'"):
        checkpointing.read_latest(tmp_path)


def test_the_per_rank_format_requires_a_pointer_and_allows_release(tmp_path):
    with pytest.raises(LegacyCheckpointError, match="no latest_checkpointed_iteration.txt; not a Megatron "
                                                    "checkpoint directory"):
        read_tracker(tmp_path)
    (tmp_path / TRACKER_FILE).write_text("release")
    assert read_tracker(tmp_path) == "release"
    (tmp_path / TRACKER_FILE).write_text("3")
    assert read_tracker(tmp_path) == 3
    (tmp_path / TRACKER_FILE).write_text("x")
    with pytest.raises(LegacyCheckpointError, match="expected 'release' or an iteration, found 'x'"):
        read_tracker(tmp_path)
    assert not legacy.is_legacy_checkpoint(tmp_path)


def test_write_latest_is_atomic_and_durable(tmp_path, monkeypatch):
    synced, replaced = [], []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        real_fsync(fd)

    def replace(src, dst):
        replaced.append((Path(src).name, Path(dst).name))
        assert Path(src).read_text() == "5"  # complete before it is renamed into place
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    (tmp_path / TRACKER_FILE).write_text("4")
    write_latest(tmp_path, 5)
    assert (tmp_path / TRACKER_FILE).read_text() == "5" and read_latest(tmp_path) == 5
    assert replaced == [(TRACKER_FILE + ".tmp", TRACKER_FILE)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [TRACKER_FILE]
    assert len(synced) == 2  # the file, then the directory
    if os.path.exists("/proc/self/fd"):
        assert synced == [str((tmp_path / (TRACKER_FILE + ".tmp")).resolve()), str(tmp_path.resolve())]


def test_write_latest_release(tmp_path):
    write_latest(tmp_path, "release")
    assert read_tracker(tmp_path) == "release"


# ---------------------------------------------------------------- moetrain.json
def test_meta_round_trip_and_text(tmp_path):
    meta = {"model_config": {"name": "llama-tiny", "num_layers": 2}, "iteration": 3, "path": Path("/x")}
    write_meta(tmp_path, meta)
    text = (tmp_path / META_FILE).read_text()
    assert text == json.dumps(meta, indent=2, default=str)  # what the trainer has always written
    assert read_meta(tmp_path) == {**meta, "path": "/x"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [META_FILE]
    assert read_meta(tmp_path / "nowhere") is None


def test_the_trainer_refuses_a_checkpoint_without_meta(tmp_path):
    (tmp_path / "iter_0000002").mkdir()
    with pytest.raises(ConfigError, match=r"iter_0000002 has no moetrain\.json; it was not written by "
                                          r"moetrain-pretrain"):
        checkpointing.read_meta(tmp_path, 2)
    write_meta(tmp_path / "iter_0000002", {"model_config": {}})
    assert checkpointing.read_meta(tmp_path, 2) == {"model_config": {}}

