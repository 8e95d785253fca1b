"""Damaged checkpoints (tests/checkpoint_fault_ranks.py, grok1-tiny on mock data, 1 rank):
truncating, deleting or bit-flipping one file of the latest checkpoint is named in one message and
the run resumes from the previous intact checkpoint with exactly the uninterrupted losses; with
--no-checkpoint-fallback it stops before training; a save onto a full disk keeps the previous
checkpoint and the pointer; a planted pickle is refused and never runs."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from checkpoint_fault_ranks import fault_group

from moetrain.testing.spawn import run_on_ranks

pytestmark = pytest.mark.multirank

DAMAGES = {"truncate": ("__0_0.distcp", "truncate"), "delete": ("common.pt", "delete"),
           "bitflip": (".metadata", "flip")}


@pytest.fixture(scope="module")
def faults():
    tmp = Path(tempfile.mkdtemp(prefix="moetrain_faults_"))
    try:
        out = run_on_ranks(1, fault_group, (str(tmp), DAMAGES), timeout=400)[0]
        yield {**out, "tmp": tmp}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_every_written_file_is_recorded(faults):
    files = faults["files"]
    assert {"__0_0.distcp", ".metadata", "common.pt", "rng/rank_00000.pt"} <= set(files), files


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_latest_checkpoint_falls_back_to_the_intact_one_exactly(faults, damage):
    ref, resumed = faults["ref"], faults[damage]
    # Resumed from iteration 2 (iteration 4 is damaged): iterations 3..6, bit for bit.
    assert resumed == {i: ref[i] for i in range(3, 7)}, (damage, resumed)


def test_no_checkpoint_fallback_refuses_naming_the_checkpoint_and_file(faults):
    message = faults["refused"]
    assert message is not None
    assert "checkpoint " in message and "iter_0000004 is damaged: __0_0.distcp is" in message and "short" in message
    assert "--no-checkpoint-fallback: not resuming from the older" in message and "iter_0000002" in message


def test_a_planted_pickle_is_refused_by_name_and_never_runs(faults):
    assert faults["payload_ran"] is False
    message = faults["planted"]
    assert message is not None and "rng/rank_00000.pt: refused" in message and "never unpickles" in message


def test_a_full_disk_keeps_the_previous_checkpoint_and_stops(faults):
    stop = faults["full_stop"]
    assert "saving" in stop["error"] and "iter_0000004 failed on rank 0: OSError" in stop["error"]
    assert "No space left on device" in stop["error"] and "bytes free in" in stop["error"]
    assert "the previous checkpoint" in stop["error"] and "iter_0000002 is intact" in stop["error"]
    assert stop["pointer"] == 2 and stop["dirs"] == ["iter_0000002"]  # no half-written directory


def test_save_failure_continue_goes_on_and_saves_later(faults):
    cont = faults["full_continue"]
    assert cont["losses"] == faults["ref"]  # the failed save changed nothing in training
    assert cont["pointer"] == 6 and cont["dirs"] == ["iter_0000002", "iter_0000006"]


def test_checkpoint_info_prints_what_a_checkpoint_holds_and_its_damage(faults, capsys):
    import runpy
    import sys

    tool = str(Path(__file__).resolve().parents[1] / "tools" / "checkpoint_info.py")

    def info(path) -> tuple[int, str]:
        old = sys.argv
        sys.argv = [tool, str(path)]
        try:
            runpy.run_path(tool, run_name="__main__")
        except SystemExit as e:
            code = e.code
        finally:
            sys.argv = old
        return code, capsys.readouterr().out

    code, out = info(faults["tmp"] / "ref")
    assert code == 0 and out.count(": intact") == 3 and "iter_0000006  (latest): intact" in out
    assert "iteration 6, consumed samples 24" in out and "model grok1-tiny (family grok1" in out
    assert "__0_0.distcp" in out and "rng/rank_00000.pt" in out
    code, out = info(faults["tmp"] / "refused")  # iteration 4's shard truncated, never resumed
    assert code == 1 and "iter_0000004  (latest): DAMAGED: __0_0.distcp is" in out and "iter_0000002: intact" in out
