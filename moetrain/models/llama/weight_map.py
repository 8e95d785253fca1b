"""HF <-> megatron-core weight map for Llama (dense) and Mixtral (MoE).

HF names are the checkpoint (safetensors) names, which is what transformers 5's save_pretrained
writes and from_pretrained reads. For Mixtral these are per-expert
``model.layers.N.block_sparse_moe.experts.E.{w1,w3,w2}.weight`` although the *in-memory* module of
transformers 5 fuses experts (``model.layers.N.mlp.experts.gate_up_proj`` [E, 2*ffn, h] = [w1; w3]
per expert, ``...down_proj`` [E, h, ffn], router ``model.layers.N.mlp.gate.weight``);
``mixtral_from_transformers`` / ``mixtral_to_transformers`` translate between the two.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from moetrain.models.common.weight_map import (
    ModelMap,
    ShardLayout,
    TensorRule,
    attention_rules,
    dense_mlp_rules,
    global_rules,
    moe_rules,
    norm_rule,
)

_L = "model.layers.{layer}."
_E = _L + "block_sparse_moe.experts.{expert}."


def llama_rules(cfg, layout: ShardLayout) -> list[TensorRule]:
    rules = global_rules(cfg, layout, "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")
    rules += attention_rules(*(_L + f"self_attn.{p}_proj.weight" for p in "qkvo"))
    rules += [norm_rule("input_layernorm", _L + "input_layernorm.weight"),
              norm_rule("pre_mlp_layernorm", _L + "post_attention_layernorm.weight")]
    if cfg.is_moe:  # Mixtral: w1 = gate (SiLU branch), w3 = up, w2 = down
        rules += moe_rules(_L + "block_sparse_moe.gate.weight", _E + "w1.weight", _E + "w3.weight", _E + "w2.weight")
    else:
        rules += dense_mlp_rules(*(_L + f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")))
    return rules


LLAMA_MAP = ModelMap(llama_rules)

_FUSED = re.compile(r"model\.layers\.(\d+)\.mlp\.(experts\.gate_up_proj|experts\.down_proj|gate\.weight)$")


def is_transformers_mixtral(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(_FUSED.match(k) for k in sd)


def mixtral_from_transformers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers-5 in-memory Mixtral state dict -> checkpoint names (views, no copies)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        m = _FUSED.match(name)
        if not m:
            out[name] = t
            continue
        n, kind = m.groups()
        moe = f"model.layers.{n}.block_sparse_moe."
        if kind == "gate.weight":
            out[moe + "gate.weight"] = t  # [E, h]
        elif kind == "experts.gate_up_proj":  # [E, 2*ffn, h]: per expert [gate (w1); up (w3)]
            for e, (w1, w3) in enumerate(x.chunk(2, 0) for x in t):
                out[moe + f"experts.{e}.w1.weight"], out[moe + f"experts.{e}.w3.weight"] = w1, w3
        else:  # down_proj [E, h, ffn]
            for e, w2 in enumerate(t):
                out[moe + f"experts.{e}.w2.weight"] = w2
    return out


_PER_EXPERT = re.compile(r"model\.layers\.(\d+)\.block_sparse_moe\.(gate\.weight|experts\.(\d+)\.(w[123])\.weight)$")


def mixtral_to_transformers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint names -> transformers-5 in-memory Mixtral names (for ``model.load_state_dict``)."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
    for name, t in sd.items():
        m = _PER_EXPERT.match(name)
        if not m:
            out[name] = t
        elif m.group(2) == "gate.weight":
            out[f"model.layers.{m.group(1)}.mlp.gate.weight"] = t
        else:
            experts.setdefault(int(m.group(1)), {}).setdefault(int(m.group(3)), {})[m.group(4)] = t
    for n, by_e in experts.items():
        order = sorted(by_e)
        out[f"model.layers.{n}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([by_e[e]["w1"], by_e[e]["w3"]]) for e in order])
        out[f"model.layers.{n}.mlp.experts.down_proj"] = torch.stack([by_e[e]["w2"] for e in order])
    return out
