"""A converted checkpoint computes what the HF model computes: convert tiny HF Llama, Mixtral and
Grok-1 to Megatron per-rank files (TP2 x PP2, x EP2 for the MoE models), load each rank's file with
load_rank_state_dict into moetrain's model on 4 gloo ranks, and compare logits with HF's."""

from __future__ import annotations

import pytest
import torch
from convert_fixtures import run, write_hf
from convert_ranks import logits_from_legacy

from moetrain.testing.spawn import run_on_ranks

pytestmark = pytest.mark.multirank


def test_converted_logits_match_hf(tmp_path):
    tokens = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    checkpoints, references = [], []
    for flavor in ("llama-tiny", "mixtral-tiny", "grok1-tiny"):
        cfg, model = write_hf(flavor, tmp_path / flavor)
        with torch.no_grad():
            references.append(model(input_ids=tokens).logits.float())
        run(flavor, "hf", "mg", tmp_path / flavor, tmp_path / f"{flavor}-mg", tp=2, pp=2, ep=2 if cfg.is_moe else 1)
        checkpoints.append((cfg, tmp_path / f"{flavor}-mg"))
    per_rank = run_on_ranks(4, logits_from_legacy, (checkpoints, tokens), timeout=240)
    for i, ((cfg, _), ref) in enumerate(zip(checkpoints, references)):
        got = [r[i] for r in per_rank if r[i] is not None]
        assert got, cfg.name
        for logits in got:
            torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4, msg=cfg.name)
