"""What a model family is: one registered description per folder under ``moetrain/models/``.

Pattern: torchtitan's per-model folders with their train spec. A family folder (``grok1/``,
``llama/``) holds the same files - ``flavors.py`` (named presets, tiny debug ones included),
``spec.py`` (its megatron-core decoder layer), ``weight_map.py`` (HF <-> megatron tensor rules,
tied names included), ``hf_config.py`` (ModelConfig <-> Hugging Face config) - and ``family.py``,
which defines ``FAMILY``. ``moetrain.models.registry`` discovers every folder that has one, so
adding a family means adding a folder; nothing outside the registry asks which family a model is.

Parts that import megatron-core or transformers are reached through small functions that import
on first use: validating a launch (flavors, shapes) must stay cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moetrain.models.common.weight_map import ModelMap
    from moetrain.models.config import ModelConfig


def _no_hook(model: Any, cfg: ModelConfig) -> None:
    del model, cfg


@dataclass(frozen=True)
class ModelFamily:
    name: str  # ModelConfig.family
    flavors: tuple[ModelConfig, ...]
    # One decoder layer (a megatron-core ModuleSpec) for a model of this family.
    layer_spec: Callable[[ModelConfig], Any]
    # HF <-> megatron-core tensor rules (templates, sharding kinds, tied output).
    weight_map: Callable[[], ModelMap]
    # ModelConfig -> transformers config; refuses what the HF class cannot express.
    to_hf_config: Callable[[ModelConfig], Any]
    # HF config dict -> ModelConfig, or None when the dict is not this family's.
    from_hf_config: Callable[[dict, str], ModelConfig | None]
    # ckpt_converters' --model-type-hf values of this family, each with the test a model must pass.
    converter_model_types: Mapping[str, Callable[[ModelConfig], bool]]
    # Human name of a model of the family, for messages ("Grok-1", "Mixtral (MoE)").
    describe: Callable[[ModelConfig], str]
    # Called on every built model chunk (e.g. Grok-1's embedding / logit multipliers).
    after_build: Callable[[Any, ModelConfig], None] = _no_hook
    # Other in-memory HF layouts of the family's state dicts, turned into the checkpoint one.
    normalize_hf_state: Callable[[ModelConfig, Mapping], Mapping] | None = None
    notes: dict = field(default_factory=dict)
