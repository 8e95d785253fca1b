"""Model definitions: one folder per model family, shared parts in common/."""

from moetrain.models.config import ModelConfig
from moetrain.models.registry import FLAVORS, get_flavor, list_flavors

__all__ = ["ModelConfig", "FLAVORS", "get_flavor", "list_flavors"]
