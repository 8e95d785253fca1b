"""The family registry: every folder under ``moetrain/models/`` with a ``family.py`` defining
``FAMILY`` is a model family; its flavors (named ModelConfig presets, tiny debug ones included)
are the ``--model`` choices. This is the only module that looks a family up by name.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from moetrain.models.config import ModelConfig
from moetrain.models.family import ModelFamily


def _discover() -> dict[str, ModelFamily]:
    families = {}
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if not info.ispkg or not (Path(__file__).parent / info.name / "family.py").is_file():
            continue
        family = importlib.import_module(f"moetrain.models.{info.name}.family").FAMILY
        if family.name in families:
            raise RuntimeError(f"two model families are named {family.name!r}")
        families[family.name] = family
    return families


FAMILIES: dict[str, ModelFamily] = _discover()


def _flavors() -> dict[str, ModelConfig]:
    flavors = {}
    for family in FAMILIES.values():
        for cfg in family.flavors:
            if cfg.family != family.name:
                raise RuntimeError(f"flavor {cfg.name!r} is listed by family {family.name!r} but says {cfg.family!r}")
            if cfg.name in flavors:
                raise RuntimeError(f"two flavors are named {cfg.name!r}")
            flavors[cfg.name] = cfg
    return flavors


FLAVORS: dict[str, ModelConfig] = _flavors()


def family_of(cfg: ModelConfig) -> ModelFamily:
    """The family a model belongs to (``cfg.family``)."""
    try:
        return FAMILIES[cfg.family]
    except KeyError:
        raise ValueError(f"model {cfg.name!r}: family must be one of {tuple(FAMILIES)}, got {cfg.family!r}") from None


def family_for_model_type(model_type_hf: str) -> ModelFamily:
    """The family that owns a converter ``--model-type-hf`` value."""
    for family in FAMILIES.values():
        if model_type_hf in family.converter_model_types:
            return family
    raise ValueError(f"--model-type-hf must be one of {', '.join(converter_model_types())}, got {model_type_hf!r}")


def converter_model_types() -> tuple[str, ...]:
    return tuple(t for family in FAMILIES.values() for t in family.converter_model_types)


def list_flavors() -> list[str]:
    return sorted(FLAVORS)


def get_flavor(name: str, **overrides) -> ModelConfig:
    """The named flavor, with field overrides applied (``get_flavor("grok1-tiny", num_layers=8)``)."""
    if name not in FLAVORS:
        raise ValueError(f"unknown model flavor {name!r}; choose one of: {', '.join(list_flavors())}")
    cfg = FLAVORS[name].replace(**overrides) if overrides else FLAVORS[name]
    family_of(cfg)  # an overridden family must exist
    return cfg
