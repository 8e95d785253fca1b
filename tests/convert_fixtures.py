"""Shared helpers for the converter tests: tiny HF checkpoints written as HF writes them."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from moetrain.checkpoint_formats.convert import convert
from moetrain.checkpoint_formats.options import ConvertOptions
from moetrain.models import get_flavor
from moetrain.models.hf_config import to_hf_config

MODEL_TYPES = {"llama-tiny": "llama2", "mixtral-tiny": "mixtral", "grok1-tiny": "grok1"}


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


def write_hf(flavor: str, path: Path, max_shard_size: str = "100KB"):
    """save_pretrained with small shards (several files + index), as users get them from the Hub."""
    cfg, model = hf_model(flavor)
    model.save_pretrained(path, max_shard_size=max_shard_size)
    return cfg, model


def read_hf_tensors(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def run(flavor: str, load: str, save: str, src: Path, dst: Path, **kw):
    return convert(ConvertOptions(MODEL_TYPES[flavor], load, save, src, dst, progress=False, **kw))
