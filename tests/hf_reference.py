"""Tiny Hugging Face reference models with random weights that make every component matter."""

from __future__ import annotations

import torch

from moetrain.models import get_flavor
from moetrain.models.hf_config import to_hf_config


def hf_model(flavor: str, seed: int = 0):
    cfg = get_flavor(flavor)
    torch.manual_seed(seed)
    if cfg.family == "grok1":
        from moetrain.models.grok1.hf_model import Grok1ModelForCausalLM, init_grok1_weights_for_test

        model = Grok1ModelForCausalLM(to_hf_config(cfg))
        init_grok1_weights_for_test(model, seed=seed, std=0.2, norm_noise=0.3)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(to_hf_config(cfg), attn_implementation="eager")
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.05)
    return cfg, model.float().eval()
