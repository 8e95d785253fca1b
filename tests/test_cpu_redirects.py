"""The CPU redirections for megatron-core and the CPU RNG tracker.

``missing_targets()`` runs in-process (it only imports upstream modules). Everything that applies
the redirections runs in spawned gloo ranks: applying them here would patch ``torch.cuda`` for the
whole pytest process. One TP2 + sequence-parallel MoE spawn covers the redirections and the RNG.
"""

from __future__ import annotations

import pytest
import torch
from device_ranks import redirects_and_rng  # tests/ is on sys.path under pytest

from moetrain.device import cpu_redirects
from moetrain.testing.spawn import run_on_ranks


def test_no_redirect_target_missing_upstream():
    missing = cpu_redirects.missing_targets()
    assert missing == [], (
        f"megatron-core no longer has {missing}: revisit these redirections in moetrain/device/cpu_redirects.py"
    )
    assert len(cpu_redirects.REDIRECTS) >= 10
    assert all(r.why for r in cpu_redirects.REDIRECTS)


def test_missing_targets_reports_a_removed_object(monkeypatch):
    fake = cpu_redirects.Redirect("megatron.core.transformer.moe.moe_utils:no_such_function", "test", lambda: None)
    monkeypatch.setattr(cpu_redirects, "REDIRECTS", (*cpu_redirects.REDIRECTS, fake))
    assert cpu_redirects.missing_targets() == ["megatron.core.transformer.moe.moe_utils:no_such_function"]


@pytest.fixture(scope="module")
def tp2():
    return run_on_ranks(2, redirects_and_rng, timeout=240)


pytestmark = pytest.mark.multirank


def test_redirections_on_every_rank(tp2):
    for rank, out in enumerate(tp2):
        r = out["redirects"]
        assert r["applied"], rank
        assert r["current_device"] == "cpu" and r["factory_device"] == "cpu"
        assert r["type_cuda_float"] and r["type_float"] and r["type_not_half"] and r["type_bf16"]
        assert r["type_convert"] and r["tensor_cuda_is_self"]
        assert r["causal_mask"].device.type == "cpu"
        assert torch.equal(r["causal_mask"], torch.ones(4, 4, dtype=torch.bool).triu(1))
        assert r["swa_mask_device"] == "cpu"
        assert r["te_general_gemm_defined"]
        assert r["as_numpy"] == "ndarray"
        assert r["stream_equal"]


def _is_replicated(name: str) -> bool:
    # router, norms, and whole experts under expert-tensor-parallel size 1
    return ".router." in name or "layernorm" in name or "final_layernorm" in name or ".experts." in name


def test_replicated_parameters_identical_on_tp_ranks(tp2):
    params0, params1 = tp2[0]["params"], tp2[1]["params"]
    assert params0.keys() == params1.keys()
    replicated = [n for n in params0 if _is_replicated(n)]
    assert any(".router." in n for n in replicated) and any(".experts." in n for n in replicated)
    assert any("layernorm" in n for n in replicated)
    differing = [n for n in replicated if not torch.equal(params0[n], params1[n])]
    assert differing == [], f"replicated parameters differ between TP ranks: {differing}"
    # TP-split weights are drawn from the per-TP-rank stream: the two shards differ.
    split = [n for n in params0 if "linear_qkv" in n or "word_embeddings" in n]
    assert split and all(not torch.equal(params0[n], params1[n]) for n in split)
    # ... and the router / experts are really random (not all-zero / all-equal).
    router = next(params0[n] for n in replicated if ".router." in n)
    assert router.std() > 0


def test_init_is_reproducible_and_seed_dependent(tp2):
    for out in tp2:
        assert out["same_seed_equal"]
        assert out["other_seed_differs"] == [n for n in out["params"] if "layernorm" in n], (
            "only the constant-initialised norms may coincide between seeds")


def test_tracker_fork(tp2):
    rng0, rng1 = tp2[0]["rng"], tp2[1]["rng"]
    for rng in (rng0, rng1):
        assert rng["tracker"] == "CpuRNGStatesTracker"
        assert rng["outer_restored"], "fork must restore the outer CPU RNG state"
        assert not torch.equal(rng["tp_draw"], rng["tp_draw_again"])
    # tensor-parallel state: different on the two TP ranks
    assert not torch.equal(rng0["tp_draw"], rng1["tp_draw"])
    # default stream and expert stream (same EP rank, expert-TP 1): the same on both TP ranks
    assert torch.equal(rng0["outer_draw"], rng1["outer_draw"])
    assert torch.equal(rng0["expert_draw"], rng1["expert_draw"])
