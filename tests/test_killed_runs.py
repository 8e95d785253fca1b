"""A run SIGKILLed at a random point of training and relaunched with the same command reproduces the
uninterrupted losses (tests/kill_resume_ranks.py: grok1-tiny, PP2 on 2 gloo ranks, a checkpoint
every 2 iterations).

Two kill points are drawn per day (seed: the date, or MOETRAIN_KILL_SEED) and named in the output
and in every assertion: the rank (0, 1 or all), the iteration and the phase (a layer's forward or
backward, or in the middle of a save). The run is killed at the first,
relaunched, killed at the second (after the point it resumed from), and relaunched to the end.
"""

from __future__ import annotations

import datetime
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest
from kill_resume_ranks import ITERS, LOCAL_LAYERS, MICRO_BATCHES, SAVE_EVERY, describe, launch
from sft_training_ranks import metrics

from moetrain.checkpoint_formats.directory import iter_dir_name, read_latest
from moetrain.testing.spawn import RankFailure, run_on_ranks

pytestmark = pytest.mark.multirank

PHASES = ("forward", "backward", "save")


def _seed() -> int:
    return int(os.environ.get("MOETRAIN_KILL_SEED", datetime.date.today().strftime("%Y%m%d")))


def draw_point(rng: random.Random, after: int) -> dict:
    """A kill point in an iteration after ``after`` (the one the launch resumes from)."""
    phase = rng.choice(PHASES)
    iterations = range(after + 1, ITERS + 1)
    if phase == "save":
        iterations = [i for i in iterations if i % SAVE_EVERY == 0]
    point = {"phase": phase, "iteration": rng.choice(list(iterations)), "rank": rng.choice([0, 1, "all"])}
    if phase in ("forward", "backward"):
        point.update(micro_batch=rng.randint(1, MICRO_BATCHES), layer=rng.randint(1, LOCAL_LAYERS))
    return point


def _resume_point(ckpt: Path) -> int:
    return read_latest(ckpt) or 0


def _iteration_dirs(ckpt: Path) -> list[str]:
    return sorted(p.name for p in ckpt.iterdir() if p.is_dir() and p.name.startswith("iter_")) if ckpt.exists() else []


def _logged(log_dir: Path) -> dict[int, float]:
    """Iteration -> loss as the launch logged them (none when it was killed before its first)."""
    try:
        rows = metrics(log_dir)
    except FileNotFoundError:
        rows = []
    return {row["iteration"]: row["lm_loss"] for row in rows}


@pytest.fixture(scope="module")
def killed_runs():
    tmp = Path(tempfile.mkdtemp(prefix="moetrain_kill_"))
    seed = _seed()
    rng = random.Random(seed)
    try:
        run_on_ranks(2, launch, (str(tmp), "ref", "log_ref", None, 0), timeout=300)
        launches = []
        for k in (1, 2):
            start = _resume_point(tmp / "ckpt")
            # The second kill lands after the point the relaunch resumes from, so both happen.
            point = draw_point(rng, start)
            print(f"kill point {k} (seed {seed}): {describe(point)}")
            with pytest.raises(RankFailure):
                run_on_ranks(2, launch, (str(tmp), "ckpt", f"log_{k}", point, start), timeout=300)
            launches.append({"point": point, "start": start, "marker": tmp / f"killed_log_{k}",
                             "logged": _logged(tmp / f"log_{k}"), "pointer_after": read_latest(tmp / "ckpt"),
                             "visible_after": _iteration_dirs(tmp / "ckpt")})
        final_start = _resume_point(tmp / "ckpt")
        run_on_ranks(2, launch, (str(tmp), "ckpt", "log_3", None, final_start), timeout=300)
        yield {"seed": seed, "ref": _logged(tmp / "log_ref"), "launches": launches, "final_start": final_start,
               "final": _logged(tmp / "log_3"), "pointer": read_latest(tmp / "ckpt"),
               "visible": _iteration_dirs(tmp / "ckpt")}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_each_kill_happened_where_it_was_drawn(killed_runs):
    for launch_ in killed_runs["launches"]:
        point = launch_["point"]
        assert launch_["marker"].read_text().strip() == describe(point), (killed_runs["seed"], point)
        # The iterations before the kill were trained (and logged); the killed one never finished.
        done = point["iteration"] if point["phase"] == "save" else point["iteration"] - 1
        assert sorted(launch_["logged"]) == list(range(launch_["start"] + 1, done + 1)), describe(point)


def test_every_launch_reproduces_the_uninterrupted_losses(killed_runs):
    ref = killed_runs["ref"]
    assert sorted(ref) == list(range(1, ITERS + 1))
    for launch_ in killed_runs["launches"]:
        assert launch_["logged"] == {i: ref[i] for i in launch_["logged"]}, describe(launch_["point"])
    final, start = killed_runs["final"], killed_runs["final_start"]
    points = "; ".join(describe(launch_["point"]) for launch_ in killed_runs["launches"])
    assert final == {i: ref[i] for i in range(start + 1, ITERS + 1)}, f"seed {killed_runs['seed']}: {points}"


def test_the_pointer_only_ever_names_a_complete_checkpoint(killed_runs):
    # After a kill (mid-save included) the pointer names the last checkpoint saved before the killed
    # iteration; the half-written one stays a hidden temporary directory, never an iter_ directory.
    for launch_ in killed_runs["launches"]:
        point = launch_["point"]
        last_saved = (point["iteration"] - 1) // SAVE_EVERY * SAVE_EVERY
        assert launch_["pointer_after"] == (last_saved or None), describe(point)
        assert launch_["visible_after"] == [iter_dir_name(i) for i in range(SAVE_EVERY, point["iteration"], SAVE_EVERY)]
    assert killed_runs["pointer"] == ITERS
    assert killed_runs["visible"] == [iter_dir_name(i) for i in range(SAVE_EVERY, ITERS + 1, SAVE_EVERY)]
