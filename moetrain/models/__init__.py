"""Model definitions: the architecture only (no training choices, no device). One folder per
family (``grok1/``, ``llama/``) registered through its ``family.py``; shared parts in ``common/``;
``registry.py`` finds the families and their flavors."""

from moetrain.models.config import ModelConfig
from moetrain.models.registry import FAMILIES, FLAVORS, family_of, get_flavor, list_flavors

__all__ = ["ModelConfig", "FAMILIES", "FLAVORS", "family_of", "get_flavor", "list_flavors"]
