"""Parallel invariance for every model family: a few optimizer steps from the same weights and data
give the same losses on 1 rank and under TP2, PP2, EP2 and TP2 x PP2 (x EP2) — Llama and Mixtral here,
Grok-1 (with resume, reshard and the interleaved schedule) in tests/test_training_e2e.py.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from test_training_e2e import PARITY_RTOL, demo_data
from training_family_ranks import train

from moetrain.testing.spawn import run_on_ranks

pytestmark = pytest.mark.multirank

SP = ["--sequence-parallel"]
LAYOUTS = {  # flavor: {name: (world, flags)}
    "llama-tiny": {
        "tp2": (2, ["--tensor-model-parallel-size", "2", *SP]),
        "pp2": (2, ["--pipeline-model-parallel-size", "2"]),
        "tp2pp2dp2": (8, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2", *SP,
                          "--use-distributed-optimizer"]),
    },
    "mixtral-tiny": {
        "tp2": (2, ["--tensor-model-parallel-size", "2", *SP]),
        "pp2": (2, ["--pipeline-model-parallel-size", "2"]),
        "ep2": (2, ["--expert-model-parallel-size", "2", "--use-distributed-optimizer"]),
        "tp2pp2ep2": (8, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                          "--expert-model-parallel-size", "2", *SP, "--use-distributed-optimizer"]),
    },
}


@pytest.fixture(scope="module")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="moetrain_families_"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(workdir):
    data, tokenizer = demo_data()
    return {flavor: run_on_ranks(1, train, (flavor, data, tokenizer, str(workdir), "ref", [], True),
                                 timeout=300)[0] for flavor in LAYOUTS}


@pytest.mark.parametrize("flavor,layout", [(f, n) for f, layouts in LAYOUTS.items() for n in layouts])
def test_losses_match_single_rank(reference, workdir, flavor, layout):
    data, tokenizer = demo_data()
    world, flags = LAYOUTS[flavor][layout]
    results = run_on_ranks(world, train, (flavor, data, tokenizer, str(workdir), layout, flags, False), timeout=300)
    losses = results[-1]  # the last rank is on the last pipeline stage
    ref = reference[flavor]
    assert len(losses) == len(ref) and ref[-1] < ref[0], ref
    assert losses == pytest.approx(ref, rel=PARITY_RTOL), f"{flavor} {layout}: {losses} vs 1 rank {ref}"


@pytest.mark.parametrize("precision", [["--bf16"], ["--fp16", "--initial-loss-scale", "4096"]],
                         ids=["bf16", "fp16"])
def test_mixed_precision_tracks_fp32(reference, workdir, precision):
    """--bf16 / --fp16 (half-precision weights and compute; fp32 main params and grads in the
    distributed optimizer; dynamic loss scaling for fp16) under TP2 x PP2 x EP2 follow the fp32
    single-rank losses closely, and really compute in half precision."""
    data, tokenizer = demo_data()
    flags = [*precision, *LAYOUTS["mixtral-tiny"]["tp2pp2ep2"][1]]
    losses = run_on_ranks(8, train, ("mixtral-tiny", data, tokenizer, str(workdir), precision[0][2:], flags,
                                     False), timeout=300)[-1]
    ref = reference["mixtral-tiny"]
    assert losses == pytest.approx(ref, rel=1e-2)
    assert losses != pytest.approx(ref, rel=1e-6), "reproduced fp32 to 1e-6: was it half precision at all?"
