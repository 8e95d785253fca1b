"""MoE training options reach megatron-core's MoE layer: the load-balancing aux loss and the router
z-loss add gradient to the router without changing the forward; a capacity factor drops tokens
(changes the output). One rank, Grok-1 tiny with HF weights."""

from __future__ import annotations

import pytest
import torch
from hf_reference import hf_model
from model_parity_ranks import moe_option_effects

from moetrain.testing.spawn import run_on_ranks

pytestmark = pytest.mark.multirank


def test_aux_loss_z_loss_and_capacity_factor_take_effect(tmp_path):
    cfg, model = hf_model("grok1-tiny")
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, cfg.vocab_size, (2, 16), generator=g)
    labels = torch.roll(tokens, -1, 1)
    path = tmp_path / "grok.pt"
    torch.save(model.state_dict(), path)
    (r,) = run_on_ranks(1, moe_option_effects, (cfg, str(path), tokens, labels), timeout=240)
    plain = r["plain"]
    with torch.no_grad():
        torch.testing.assert_close(plain["logits"], model(input_ids=tokens).logits.float(), rtol=1e-4, atol=1e-4)
    for option in ("aux_loss", "z_loss"):
        torch.testing.assert_close(r[option]["logits"], plain["logits"], rtol=0, atol=0)
        diff = float((r[option]["router_grad"] - plain["router_grad"]).abs().max())
        assert diff > 1e-6, f"{option} did not change the router gradient"
    # Capacity 0.5 x the even share per expert: some routed tokens are dropped.
    assert float((r["capacity"]["logits"] - plain["logits"]).abs().max()) > 1e-3
