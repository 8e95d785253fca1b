"""The Grok-1 family: flavors, layer spec (soft-capped attention, sandwich norms), multipliers,
HF config and weight map (hpcai-tech/grok-1's layout). Registered by ``moetrain.models.registry``."""

from __future__ import annotations

from moetrain.models.family import ModelFamily
from moetrain.models.grok1.flavors import FLAVORS


def _layer_spec(cfg):
    from moetrain.models.grok1.spec import layer_spec

    return layer_spec(cfg)


def _weight_map():
    from moetrain.models.grok1.weight_map import GROK1_MAP

    return GROK1_MAP


def _to_hf(cfg):
    from moetrain.models.grok1.hf_config import to_hf

    return to_hf(cfg)


def _from_hf(d, name):
    from moetrain.models.grok1.hf_config import from_hf

    return from_hf(d, name)


def _after_build(model, cfg):
    from moetrain.models.grok1.multipliers import apply_multipliers

    apply_multipliers(model, cfg)


FAMILY = ModelFamily(
    name="grok1",
    flavors=FLAVORS,
    layer_spec=_layer_spec,
    weight_map=_weight_map,
    to_hf_config=_to_hf,
    from_hf_config=_from_hf,
    converter_model_types={"grok1": lambda cfg: True},
    describe=lambda cfg: "Grok-1",
    after_build=_after_build,
)
