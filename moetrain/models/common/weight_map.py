"""Shared machinery for HF <-> megatron-core weight maps.

A model's map is a list of ``TensorRule``s: one megatron-core tensor (a name template with
``{layer}`` / ``{expert}``), the HF tensor(s) it is built from, and how it is sharded. Rules are
applied one tensor at a time, so the streaming converter can reuse them without a full state dict.

Sharding kinds (megatron-core GPTModel, expert-tensor-parallel size 1):
  replicated  same tensor on every TP rank (norms, router, whole experts)
  split       TP-split along ``axis`` (RowParallel linear_proj / linear_fc2: axis 1)
  vocab       rows padded with zeros to padded_vocab_size, then TP-split along dim 0
  qkv         q [nh*hd, h], k, v [ng*hd, h] -> per query group [q of the group..., k, v]; TP splits groups
  gated_fc1   gate, up [ffn, h] -> [gate_r; up_r] with each branch TP-split (or whole if not tp_split)
Scopes: ``first`` / ``last`` pipeline stage only, ``layer`` (per local layer), ``expert`` (per layer
and local expert of this EP rank).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from moetrain.parallel import ParallelDims, split_layers

Kind = Literal["replicated", "split", "vocab", "qkv", "gated_fc1"]
Scope = Literal["first", "last", "layer", "expert"]
HFSource = Mapping[str, torch.Tensor] | Callable[[str], torch.Tensor]


class WeightMapError(ValueError):
    """A tensor that maps to nothing, a missing tensor, or a shape that contradicts the config."""


@dataclass(frozen=True)
class ShardLayout(ParallelDims):
    """How a checkpoint is sharded: the one layout type (TP / PP / EP and the stage split of
    ParallelDims, same rules and errors) plus megatron's padded vocabulary. Expert weights are
    sharded over EP only (expert-TP 1)."""

    padded_vocab_size: int | None = None  # megatron's padded vocab; cfg.vocab_size when None

    def stage_layers(self, num_layers: int) -> tuple[int, ...]:
        try:
            return tuple(split_layers(num_layers, self.pp, self.num_layer_list))
        except ValueError as e:
            raise WeightMapError(str(e)) from None

    def stage_offset(self, num_layers: int, pp_rank: int) -> int:
        return sum(self.stage_layers(num_layers)[:pp_rank])

    def vocab_rows(self, vocab_size: int) -> int:
        return self.padded_vocab_size or vocab_size


@dataclass(frozen=True)
class RankCoord:
    tp_rank: int
    pp_rank: int
    ep_rank: int


@dataclass(frozen=True)
class TensorRule:
    mcore: str  # megatron-core name template, local {layer} / {expert} index
    hf: tuple[str, ...]  # HF name templates, global {layer} / {expert} index
    hf_shapes: tuple[tuple[str, ...], ...]  # symbolic dims of each HF tensor, see model_dims()
    kind: Kind
    scope: Scope
    axis: int = 0  # split axis for kind "split"
    tp_split: bool = True  # False for experts (expert-tensor-parallel size 1) of kind gated_fc1
    tied_copy: bool = False  # output_layer holding a copy of the tied embedding (PP>1): not written back


@dataclass(frozen=True)
class BoundTensor:
    rule: TensorRule
    mcore: str  # concrete local name
    hf: tuple[str, ...]  # concrete HF names


def model_dims(cfg) -> dict[str, int]:
    """Symbolic dims used in rule shapes: h, ffn, V, q (= heads*hd), kv (= groups*hd), E."""
    return {"h": cfg.hidden_size, "ffn": cfg.ffn_hidden_size, "V": cfg.vocab_size,
            "q": cfg.num_attention_heads * cfg.head_dim, "kv": cfg.num_query_groups * cfg.head_dim,
            "E": cfg.num_experts or 0}


def hf_shape(rule: TensorRule, i: int, dims: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(dims[d] for d in rule.hf_shapes[i])


def validate_layout(cfg, layout: ShardLayout) -> None:
    """Raise WeightMapError when the layout cannot shard this model."""
    tp, ep = layout.tp, layout.ep
    layout.stage_layers(cfg.num_layers)
    if cfg.num_query_groups % tp:
        raise WeightMapError(f"num_query_groups {cfg.num_query_groups} is not divisible by tp {tp}")
    if cfg.ffn_hidden_size % tp:
        raise WeightMapError(f"ffn_hidden_size {cfg.ffn_hidden_size} is not divisible by tp {tp}")
    rows = layout.vocab_rows(cfg.vocab_size)
    if rows < cfg.vocab_size or rows % tp:
        raise WeightMapError(f"padded_vocab_size {rows} must be >= vocab_size {cfg.vocab_size} and divisible by tp {tp}")
    if cfg.is_moe and cfg.num_experts % ep:
        raise WeightMapError(f"num_experts {cfg.num_experts} is not divisible by ep {ep}")


def bind(rules: list[TensorRule], cfg, layout: ShardLayout, coord: RankCoord) -> list[BoundTensor]:
    """Concrete (mcore name, HF names) pairs held by one rank."""
    if not (0 <= coord.tp_rank < layout.tp and 0 <= coord.pp_rank < layout.pp and 0 <= coord.ep_rank < layout.ep):
        raise WeightMapError(f"rank {coord} is outside the layout tp={layout.tp} pp={layout.pp} ep={layout.ep}")
    counts = layout.stage_layers(cfg.num_layers)
    offset = layout.stage_offset(cfg.num_layers, coord.pp_rank)
    local_experts = (cfg.num_experts or 0) // layout.ep
    out: list[BoundTensor] = []
    for rule in rules:
        if rule.scope == "first" and coord.pp_rank == 0 or rule.scope == "last" and coord.pp_rank == layout.pp - 1:
            out.append(BoundTensor(rule, rule.mcore, rule.hf))
        elif rule.scope in ("layer", "expert"):
            for i in range(counts[coord.pp_rank]):
                experts = range(local_experts) if rule.scope == "expert" else [None]
                for j in experts:
                    g = None if j is None else coord.ep_rank * local_experts + j
                    out.append(BoundTensor(rule, rule.mcore.format(layer=i, expert=j),
                                           tuple(n.format(layer=offset + i, expert=g) for n in rule.hf)))
    return out


def mcore_shape(rule: TensorRule, cfg, layout: ShardLayout) -> tuple[int, ...]:
    dims, tp = model_dims(cfg), layout.tp
    first = hf_shape(rule, 0, dims)
    if rule.kind == "replicated":
        return first
    if rule.kind == "split":
        return tuple(d // tp if a == rule.axis else d for a, d in enumerate(first))
    if rule.kind == "vocab":
        return (layout.vocab_rows(cfg.vocab_size) // tp, *first[1:])
    if rule.kind == "qkv":
        return ((dims["q"] + 2 * dims["kv"]) // tp, first[1])
    if rule.kind == "gated_fc1":
        return (2 * first[0] // (tp if rule.tp_split else 1), first[1])
    raise AssertionError(rule.kind)


def _qkv_grouped(cfg, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[ng, q_per_group + 2, hd, h]: megatron's fused order, query group by query group."""
    ng, hd = cfg.num_query_groups, cfg.head_dim
    h = q.shape[-1]
    q = q.view(ng, cfg.num_attention_heads // ng, hd, h)
    return torch.cat([q, k.view(ng, 1, hd, h), v.view(ng, 1, hd, h)], dim=1)


def shard(rule: TensorRule, tensors: list[torch.Tensor], cfg, layout: ShardLayout, tp_rank: int) -> torch.Tensor:
    """The local megatron-core tensor of TP rank ``tp_rank`` from the full HF tensor(s)."""
    tp = layout.tp
    if rule.kind == "replicated":
        t = tensors[0]
        # A view into a larger tensor (e.g. one expert of a fused [E, ...] weight) is copied so that
        # torch.save of the result does not write the whole underlying storage.
        return t.clone() if t.untyped_storage().nbytes() != t.numel() * t.element_size() else t
    if rule.kind == "split":
        return tensors[0].chunk(tp, rule.axis)[tp_rank].clone()
    if rule.kind == "vocab":
        full = tensors[0]
        pad = layout.vocab_rows(cfg.vocab_size) - full.shape[0]
        if pad:
            full = torch.cat([full, full.new_zeros(pad, *full.shape[1:])])
        return full.chunk(tp, 0)[tp_rank].clone()
    if rule.kind == "qkv":
        grouped = _qkv_grouped(cfg, *tensors)  # TP splits whole query groups
        return grouped.chunk(tp, 0)[tp_rank].reshape(-1, grouped.shape[-1]).clone()
    if rule.kind == "gated_fc1":
        gate, up = tensors
        if rule.tp_split:
            gate, up = gate.chunk(tp, 0)[tp_rank], up.chunk(tp, 0)[tp_rank]
        return torch.cat([gate, up], dim=0)
    raise AssertionError(rule.kind)


def unshard(rule: TensorRule, pieces: list[torch.Tensor], cfg) -> list[torch.Tensor]:
    """The full HF tensor(s) from the local tensors of every TP rank (in rank order)."""
    if rule.kind == "replicated":
        return [pieces[0]]
    if rule.kind == "split":
        return [torch.cat(pieces, rule.axis)]
    if rule.kind == "vocab":
        return [torch.cat(pieces, 0)[: cfg.vocab_size].clone()]  # strip the padding rows
    if rule.kind == "qkv":
        ng, hd = cfg.num_query_groups, cfg.head_dim
        qpg = cfg.num_attention_heads // ng
        grouped = torch.cat(pieces, 0)
        grouped = grouped.view(ng, qpg + 2, hd, grouped.shape[-1])
        h = grouped.shape[-1]
        return [grouped[:, :qpg].reshape(-1, h).clone(), grouped[:, qpg].reshape(-1, h).clone(),
                grouped[:, qpg + 1].reshape(-1, h).clone()]
    if rule.kind == "gated_fc1":
        halves = [p.chunk(2, 0) for p in pieces]
        return [torch.cat([g for g, _ in halves], 0), torch.cat([u for _, u in halves], 0)]
    raise AssertionError(rule.kind)


def _check_shape(name: str, tensor: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise WeightMapError(f"tensor {name!r}: expected shape {tuple(expected)}, got {tuple(tensor.shape)}")


@dataclass(frozen=True)
class ModelMap:
    """One model's map: its rule table, and the (output, embedding) HF names when they may be tied."""

    rules: Callable[[object, ShardLayout], list[TensorRule]]
    tied_names: tuple[str, str] = ("lm_head.weight", "model.embed_tokens.weight")

    def expected_hf_keys(self, cfg) -> dict[str, tuple[int, ...]]:
        """Every HF tensor the checkpoint must hold (a tied output weight is optional, not listed)."""
        dims, keys = model_dims(cfg), {}
        for b in bind(self.rules(cfg, ShardLayout()), cfg, ShardLayout(), RankCoord(0, 0, 0)):
            for i, name in enumerate(b.hf):
                keys[name] = hf_shape(b.rule, i, dims)
        return keys

    def expected_mcore_keys(self, cfg, layout: ShardLayout, coord: RankCoord) -> dict[str, tuple[int, ...]]:
        validate_layout(cfg, layout)
        return {b.mcore: mcore_shape(b.rule, cfg, layout) for b in bind(self.rules(cfg, layout), cfg, layout, coord)}

    def _optional_output(self, cfg) -> str | None:
        return None if cfg.untie_embeddings_and_output_weights else self.tied_names[0]

    def _check_hf_mapping(self, cfg, hf: Mapping[str, torch.Tensor]) -> None:
        expected = self.expected_hf_keys(cfg)
        optional = self._optional_output(cfg)
        for name, tensor in hf.items():
            if name == optional:
                _check_shape(name, tensor, expected[self.tied_names[1]])
                if self.tied_names[1] in hf and not torch.equal(tensor, hf[self.tied_names[1]]):
                    raise WeightMapError(f"tensor {name!r}: embeddings are tied but it differs from "
                                         f"{self.tied_names[1]!r}")
            elif name not in expected:
                raise WeightMapError(f"tensor {name!r} maps to no megatron-core tensor")
            else:
                _check_shape(name, tensor, expected[name])
        missing = sorted(set(expected) - set(hf))
        if missing:
            raise WeightMapError(f"tensor {missing[0]!r} is missing from the HF weights ({len(missing)} missing)")

    def hf_to_mcore(self, cfg, hf: HFSource, layout: ShardLayout, coord: RankCoord) -> dict[str, torch.Tensor]:
        """Local state dict of one rank; reads only the HF tensors that rank needs.

        ``hf`` is a full mapping (validated as a whole: unknown, missing, mis-shaped tensors) or a
        getter (each tensor validated as it is read). Outputs may share memory with the inputs.
        """
        validate_layout(cfg, layout)
        if isinstance(hf, Mapping):
            self._check_hf_mapping(cfg, hf)
            get = hf.__getitem__
        else:
            get = hf
        dims, out = model_dims(cfg), {}
        for b in bind(self.rules(cfg, layout), cfg, layout, coord):
            tensors = []
            for i, name in enumerate(b.hf):
                try:
                    t = get(name)
                except KeyError:
                    raise WeightMapError(f"tensor {name!r} is missing from the HF weights") from None
                _check_shape(name, t, hf_shape(b.rule, i, dims))
                tensors.append(t)
            out[b.mcore] = shard(b.rule, tensors, cfg, layout, coord.tp_rank)
        return out

    def mcore_to_hf(self, cfg, shards: Mapping[RankCoord, Mapping[str, torch.Tensor]],
                    layout: ShardLayout) -> dict[str, torch.Tensor]:
        """Full HF state dict from the local state dicts of the ranks (every needed rank must be given).

        Each given shard must hold exactly its expected tensors (``*._extra_state`` entries are
        ignored). TP/EP replicas are not compared: TP rank 0 / EP rank 0 is read. A tied output
        weight is not written (as save_pretrained does).
        """
        validate_layout(cfg, layout)
        for coord, sd in shards.items():
            expected = self.expected_mcore_keys(cfg, layout, coord)
            for name, tensor in sd.items():
                if name.endswith("._extra_state"):
                    continue
                if name not in expected:
                    raise WeightMapError(f"rank {coord}: tensor {name!r} maps to no HF tensor")
                _check_shape(name, tensor, expected[name])
            missing = sorted(set(expected) - set(sd))
            if missing:
                raise WeightMapError(f"rank {coord}: tensor {missing[0]!r} is missing ({len(missing)} missing)")

        def piece(tp_rank: int, pp_rank: int, ep_rank: int, name: str) -> torch.Tensor:
            coord = RankCoord(tp_rank, pp_rank, ep_rank)
            if coord not in shards:
                raise WeightMapError(f"tensor {name!r} needs rank {coord}, which was not given")
            return shards[coord][name]

        out: dict[str, torch.Tensor] = {}
        rules = self.rules(cfg, layout)
        for pp_rank in range(layout.pp):
            for ep_rank in range(layout.ep):
                for b in bind(rules, cfg, layout, RankCoord(0, pp_rank, ep_rank)):
                    if b.rule.tied_copy or (ep_rank > 0 and b.rule.scope != "expert"):
                        continue  # EP replicas of non-expert tensors; tied output copy
                    by_tp = b.rule.kind != "replicated" and (b.rule.kind != "gated_fc1" or b.rule.tp_split)
                    ranks = range(layout.tp) if by_tp else [0]
                    pieces = [piece(t, pp_rank, ep_rank, b.mcore) for t in ranks]
                    for name, tensor in zip(b.hf, unshard(b.rule, pieces, cfg)):
                        out[name] = tensor
        missing = sorted(set(self.expected_hf_keys(cfg)) - set(out))
        if missing:
            raise WeightMapError(f"tensor {missing[0]!r} was not produced ({len(missing)} missing)")
        return out


def global_rules(cfg, layout: ShardLayout, embed: str, final_norm: str, output: str) -> list[TensorRule]:
    """Embedding (first stage), final norm and output layer (last stage), as megatron-core places them.

    Tied embeddings: with PP=1 megatron-core has no output_layer.weight (it reuses the embedding);
    with PP>1 the last stage holds a copy of the embedding in output_layer.weight.
    """
    rules = [TensorRule("embedding.word_embeddings.weight", (embed,), (("V", "h"),), "vocab", "first"),
             TensorRule("decoder.final_layernorm.weight", (final_norm,), (("h",),), "replicated", "last")]
    if cfg.untie_embeddings_and_output_weights:
        rules.append(TensorRule("output_layer.weight", (output,), (("V", "h"),), "vocab", "last"))
    elif layout.pp > 1:
        rules.append(TensorRule("output_layer.weight", (embed,), (("V", "h"),), "vocab", "last", tied_copy=True))
    return rules


def attention_rules(q: str, k: str, v: str, o: str) -> list[TensorRule]:
    """Fused QKV (column parallel) and output projection (row parallel: split dim 1)."""
    pre = "decoder.layers.{layer}.self_attention."
    return [TensorRule(pre + "linear_qkv.weight", (q, k, v), (("q", "h"), ("kv", "h"), ("kv", "h")), "qkv", "layer"),
            TensorRule(pre + "linear_proj.weight", (o,), (("h", "q"),), "split", "layer", axis=1)]


def norm_rule(mcore_name: str, hf: str) -> TensorRule:
    return TensorRule(f"decoder.layers.{{layer}}.{mcore_name}.weight", (hf,), (("h",),), "replicated", "layer")


def dense_mlp_rules(gate: str, up: str, down: str) -> list[TensorRule]:
    pre = "decoder.layers.{layer}.mlp."
    return [TensorRule(pre + "linear_fc1.weight", (gate, up), (("ffn", "h"), ("ffn", "h")), "gated_fc1", "layer"),
            TensorRule(pre + "linear_fc2.weight", (down,), (("h", "ffn"),), "split", "layer", axis=1)]


def moe_rules(router: str, gate: str, up: str, down: str) -> list[TensorRule]:
    """Router (replicated) and whole experts (expert-tensor-parallel size 1: no TP split)."""
    pre = "decoder.layers.{layer}.mlp."
    exp = pre + "experts.local_experts.{expert}."
    return [TensorRule(pre + "router.weight", (router,), (("E", "h"),), "replicated", "layer"),
            TensorRule(exp + "linear_fc1.weight", (gate, up), (("ffn", "h"), ("ffn", "h")), "gated_fc1", "expert",
                       tp_split=False),
            TensorRule(exp + "linear_fc2.weight", (down,), (("h", "ffn"),), "replicated", "expert")]
