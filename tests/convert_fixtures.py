"""Shared helpers for the converter tests: tiny HF checkpoints written as HF writes them."""

from __future__ import annotations

from pathlib import Path

import torch
from hf_reference import hf_model
from safetensors.torch import load_file

from moetrain.checkpoint_formats.convert import convert
from moetrain.checkpoint_formats.options import ConvertOptions

MODEL_TYPES = {"llama-tiny": "llama2", "mixtral-tiny": "mixtral", "grok1-tiny": "grok1"}


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
