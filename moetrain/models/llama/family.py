"""The Llama family (Llama 2 / 3 and, with experts, Mixtral): flavors, the shared plain layer spec,
HF config and weight map (both transformers Mixtral layouts). Registered by ``moetrain.models.registry``."""

from __future__ import annotations

from moetrain.models.family import ModelFamily
from moetrain.models.llama.flavors import FLAVORS


def _layer_spec(cfg):
    from moetrain.models.common.spec import plain_layer_spec

    if cfg.sandwich_norm:
        raise ValueError(f"model {cfg.name!r}: sandwich norms are a Grok-1 layer; use a grok1 flavor "
                         "(or set family grok1)")
    return plain_layer_spec(cfg)


def _weight_map():
    from moetrain.models.llama.weight_map import LLAMA_MAP

    return LLAMA_MAP


def _to_hf(cfg):
    from moetrain.models.llama.hf_config import to_hf

    return to_hf(cfg)


def _from_hf(d, name):
    from moetrain.models.llama.hf_config import from_hf

    return from_hf(d, name)


def _normalize_hf_state(cfg, hf):
    """transformers 5 keeps Mixtral's experts fused in memory; checkpoints have one tensor each."""
    from moetrain.models.llama.weight_map import is_transformers_mixtral, mixtral_from_transformers

    return mixtral_from_transformers(hf) if cfg.is_moe and is_transformers_mixtral(hf) else hf


FAMILY = ModelFamily(
    name="llama",
    flavors=FLAVORS,
    layer_spec=_layer_spec,
    weight_map=_weight_map,
    to_hf_config=_to_hf,
    from_hf_config=_from_hf,
    converter_model_types={"llama2": lambda cfg: not cfg.is_moe, "llama3": lambda cfg: not cfg.is_moe,
                           "mixtral": lambda cfg: cfg.is_moe},
    describe=lambda cfg: "Mixtral (MoE)" if cfg.is_moe else "Llama (dense)",
    normalize_hf_state=_normalize_hf_state,
)
