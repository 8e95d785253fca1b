"""Checkpoints written before the stacked experts (GroupedExperts) still load and resume.

tests/fixtures/old_experts/ holds a trainer checkpoint (iteration 2 of 4, EP2 x DP2, distributed
optimizer) written by the SequentialMLP-era code and the 4 losses of that run (make_fixture.py
says how it was made). Resuming it today must continue that run: the same layout gives the old
losses of iterations 3-4 (the experts now run as grouped GEMMs instead of a loop: the same math,
another summation order, so fp32 tolerance rather than bit equality); another layout (EP1)
reshards the same weights and optimizer state.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from moetrain.testing.spawn import run_on_ranks

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "old_experts"
SAME_LAYOUT_RTOL = 1e-5  # one fp32 computation against the same one with reordered sums
RESHARD_RTOL = 2e-4  # as test_training_e2e's layout parity: other reduction groups

pytestmark = pytest.mark.multirank


def _resume_both_layouts(rank, world, data, tokenizer, tmp, micro):
    from test_training_e2e import _allow_children, _args, _losses

    from moetrain.pretrain import run_pretrain

    _allow_children()
    tmp = Path(tmp)
    at = micro.index("--expert-model-parallel-size")
    micro_layout = micro[:at] + micro[at + 2:]  # the recorded flags without the recorded layout
    out = {}
    for name, layout in (("ep2", ["--expert-model-parallel-size", "2"]), ("ep1", ["--expert-model-parallel-size", "1"])):
        summary = run_pretrain(_args(data, tokenizer, tmp, name, *micro_layout, *layout, "--load", str(tmp / name),
                                     iters=4))
        out[name] = _losses(summary)
    return out


def test_pre_grouped_experts_checkpoint_resumes():
    from test_training_e2e import demo_data

    recorded = json.loads((FIXTURE / "losses.json").read_text())
    data, tokenizer = demo_data()
    tmp = Path(tempfile.mkdtemp(prefix="old_ckpt_"))
    for name in ("ep2", "ep1"):  # a copy each: resuming writes nothing, but never touch the fixture
        shutil.copytree(FIXTURE / "checkpoint", tmp / name)
    out = run_on_ranks(2, _resume_both_layouts, (data, tokenizer, str(tmp), recorded["args"]), timeout=600)[0]
    old = recorded["losses"][2:]
    assert out["ep2"] == pytest.approx(old, rel=SAME_LAYOUT_RTOL), f"EP2 resume {out['ep2']} vs recorded {old}"
    assert out["ep1"] == pytest.approx(old, rel=RESHARD_RTOL), f"EP1 resume {out['ep1']} vs recorded {old}"
    shutil.rmtree(tmp, ignore_errors=True)
