"""Tiny Hugging Face reference models with random weights that make every component matter."""

from __future__ import annotations

import torch

from moetrain.models import get_flavor
from moetrain.models.hf_config import to_hf_config


@torch.no_grad()
def init_grok1_weights(model, seed: int = 0, std: float = 0.02, norm_noise: float = 0.1) -> None:
    """Fill every weight with N(0, std) and every norm scale with 1 + N(0, norm_noise), reproducibly.

    The HF port's init zeroes everything (a random HF Grok-1 outputs exactly 0); tests need every
    component to matter.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():  # tied lm_head appears once (as embed_tokens)
        noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
        value = 1.0 + norm_noise * noise if name.endswith(".scale") else std * noise
        param.copy_(value.to(param.dtype))


def hf_model(flavor: str, seed: int = 0):
    cfg = get_flavor(flavor)
    torch.manual_seed(seed)
    if cfg.hf_architecture == "Grok1ModelForCausalLM":
        from moetrain.models.grok1.hf_model import Grok1ModelForCausalLM

        model = Grok1ModelForCausalLM(to_hf_config(cfg))
        init_grok1_weights(model, seed=seed, std=0.2, norm_noise=0.3)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(to_hf_config(cfg), attn_implementation="eager")
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.05)
    return cfg, model.float().eval()
