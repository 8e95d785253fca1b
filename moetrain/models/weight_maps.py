"""HF <-> megatron-core weight maps, dispatched on the model family.

    hf_to_mcore(cfg, hf, layout, coord)   local state dict of one rank
    mcore_to_hf(cfg, shards, layout)      full HF state dict (checkpoint names)
    expected_mcore_keys / expected_hf_keys / rule_table

The megatron-core side is the local state dict of a GPTModel built with moetrain's specs (local
layer index per pipeline stage, local expert index per EP rank). See docs/models.md.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from moetrain.models.common.weight_map import (
    BoundTensor,
    HFSource,
    ModelMap,
    RankCoord,
    ShardLayout,
    TensorRule,
    WeightMapError,
    bind,
    mcore_shape,
    shard,
    unshard,
)
from moetrain.models.config import ModelConfig
from moetrain.models.grok1.weight_map import GROK1_MAP
from moetrain.models.llama.weight_map import LLAMA_MAP, is_transformers_mixtral, mixtral_from_transformers


def model_map(cfg: ModelConfig) -> ModelMap:
    if cfg.family == "grok1":
        return GROK1_MAP
    if cfg.family == "llama":  # Llama and Mixtral (hf_architecture MixtralForCausalLM, num_experts set)
        return LLAMA_MAP
    raise WeightMapError(f"model {cfg.name!r}: no weight map for family {cfg.family!r}")


def rule_table(cfg: ModelConfig, layout: ShardLayout | None = None) -> list[TensorRule]:
    """The per-tensor rules (templates + sharding kind), for one-tensor-at-a-time converters."""
    return model_map(cfg).rules(cfg, layout or ShardLayout())


def bound_tensors(cfg: ModelConfig, layout: ShardLayout, coord: RankCoord) -> list[BoundTensor]:
    """Concrete (mcore name, HF names, rule) triples of one rank."""
    return bind(rule_table(cfg, layout), cfg, layout, coord)


def expected_hf_keys(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    return model_map(cfg).expected_hf_keys(cfg)


def expected_mcore_keys(cfg: ModelConfig, layout: ShardLayout, coord: RankCoord) -> dict[str, tuple[int, ...]]:
    return model_map(cfg).expected_mcore_keys(cfg, layout, coord)


def hf_to_mcore(cfg: ModelConfig, hf: HFSource, layout: ShardLayout, coord: RankCoord) -> dict[str, torch.Tensor]:
    """Local megatron-core state dict of rank ``coord``. A Mixtral mapping in transformers 5's
    in-memory layout (fused experts) is accepted too."""
    if isinstance(hf, Mapping) and cfg.is_moe and cfg.family == "llama" and is_transformers_mixtral(hf):
        hf = mixtral_from_transformers(hf)
    return model_map(cfg).hf_to_mcore(cfg, hf, layout, coord)


def mcore_to_hf(cfg: ModelConfig, shards: Mapping[RankCoord, Mapping[str, torch.Tensor]],
                layout: ShardLayout) -> dict[str, torch.Tensor]:
    return model_map(cfg).mcore_to_hf(cfg, shards, layout)


def all_coords(layout: ShardLayout) -> list[RankCoord]:
    return [RankCoord(t, p, e) for p in range(layout.pp) for e in range(layout.ep) for t in range(layout.tp)]


__all__ = [
    "RankCoord", "ShardLayout", "TensorRule", "WeightMapError", "all_coords", "bound_tensors", "expected_hf_keys",
    "expected_mcore_keys", "hf_to_mcore", "mcore_shape", "mcore_to_hf", "model_map", "rule_table", "shard",
    "unshard",
]
