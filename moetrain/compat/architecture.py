"""The model a recipe's architecture flags describe, when it names no ``--model``.

Megatron-LM recipes give the whole architecture as flags (``--num-layers 64 --hidden-size 6144
--num-experts 8 --swiglu ...``). moetrain builds exactly that model: the family is read from the
flags (Grok-1's multipliers / soft-cap / sandwich norms, else Llama; experts make it Mixtral), a
field no flag gives takes Megatron-LM's default (no soft-cap, tied embeddings, rotary base 10000,
...), and every field where the result differs from the family's closest released flavor is named
once at start-up. So a ModelLink Grok-1 recipe, which builds SwiGLU experts and no attention
soft-cap, says that it differs from ``grok1-314b`` (GeGLU, soft-cap 30) instead of silently
building either.
"""

from __future__ import annotations

import dataclasses

from moetrain.config import ConfigError
from moetrain.models.config import ModelConfig

# Without these three, the flags do not describe a model (a recipe then needs --model).
REQUIRED = ("num_layers", "hidden_size", "num_attention_heads")
_GROK1_MARKERS = ("embedding_multiplier", "output_multiplier", "attn_logit_softcapping", "attn_output_multiplier",
                  "sandwich_norm")
# Megatron-LM's values for fields a recipe does not set (megatron/training/arguments.py).
MEGATRON_DEFAULTS = {"kv_channels": None, "moe_router_topk": 2, "moe_router_pre_softmax": False,
                     "moe_aux_loss_coeff": 0.0, "moe_z_loss_coeff": None, "moe_expert_capacity_factor": None,
                     "norm_epsilon": 1e-5, "rotary_base": 10000.0, "untie_embeddings_and_output_weights": False,
                     "embedding_multiplier": 1.0, "output_multiplier": 1.0, "attn_logit_softcapping": None,
                     "attn_output_multiplier": None, "sandwich_norm": False, "num_experts": None}
_NOT_COMPARED = {"name", "seq_length", "hf_architecture", "published_params", "family"}


def describes_model(overrides: dict) -> bool:
    return all(k in overrides for k in REQUIRED)


def _family(overrides: dict) -> str:
    return "grok1" if any(k in overrides for k in _GROK1_MARKERS) else "llama"


def _reference(family: str, overrides: dict) -> ModelConfig:
    """The family's released flavor closest to the flags (fewest differing fields)."""
    from moetrain.models.registry import get_flavor, list_flavors

    moe = bool(overrides.get("num_experts"))
    released: dict[tuple[str, bool], list[ModelConfig]] = {}  # (family, MoE) -> its released flavors
    for cfg in (get_flavor(n) for n in list_flavors()):
        if "tiny" not in cfg.name:
            released.setdefault((cfg.family, cfg.is_moe), []).append(cfg)
    candidates = released.get((family, moe), [])
    if not candidates:
        raise ConfigError(f"no {family} flavor {'with' if moe else 'without'} experts to build these flags from")

    def distance(c: ModelConfig) -> int:
        return sum(1 for k, v in overrides.items() if getattr(c, k, v) != v)

    return min(candidates, key=distance)


def model_from_flags(overrides: dict, seq_length: int | None) -> tuple[ModelConfig, list[str]]:
    """(the model the flags build, start-up lines naming how it differs from its family's flavor)."""
    family = _family(overrides)
    ref = _reference(family, overrides)
    if "activation" not in overrides:
        raise ConfigError("the architecture flags give no gated MLP: add --swiglu (Megatron-LM's default is a "
                          "plain GELU MLP, which moetrain's families do not have), or --activation geglu")
    values = {**dataclasses.asdict(ref), **MEGATRON_DEFAULTS}
    values["num_query_groups"] = overrides.get("num_attention_heads")  # Megatron: MHA unless GQA is asked for
    values["ffn_hidden_size"] = 4 * overrides["hidden_size"]
    values.update(overrides)
    values["name"] = f"{family}-from-flags"
    if seq_length is not None:
        values["seq_length"] = seq_length
    try:
        cfg = ModelConfig(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
    diffs = [f"{f.name} {getattr(cfg, f.name)!r} (flavor: {getattr(ref, f.name)!r})"
             for f in dataclasses.fields(ModelConfig)
             if f.name not in _NOT_COMPARED and getattr(cfg, f.name) != getattr(ref, f.name)
             and not (f.name == "kv_channels" and cfg.head_dim == ref.head_dim)]  # the same head size
    kind = f"{family}-family MoE" if cfg.is_moe else family
    lines = [f"no --model: the architecture flags build a {kind} model ({cfg.num_layers} layers, hidden "
             f"{cfg.hidden_size}{f', {cfg.num_experts} experts' if cfg.is_moe else ''})"
             + (f"; it differs from the released {ref.name} in: " + ", ".join(diffs) if diffs
                else f", the same as the released {ref.name}")]
    return cfg, lines
