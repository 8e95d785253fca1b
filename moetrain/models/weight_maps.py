"""HF <-> megatron-core weight maps, dispatched to the model's family (its ``weight_map.py``).

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


def model_map(cfg: ModelConfig) -> ModelMap:
    """The tensor rules of the model's family."""
    from moetrain.models.registry import family_of

    return family_of(cfg).weight_map()


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
    from moetrain.models.registry import family_of

    normalize = family_of(cfg).normalize_hf_state
    if isinstance(hf, Mapping) and normalize is not None:
        hf = normalize(cfg, hf)
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
