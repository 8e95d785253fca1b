"""Adapters by Hugging Face module: merged into the base weights, or written as a PEFT adapter.

Every adapter piece adapts one HF weight, whatever the family: the weight map's rule for the fused
``linear_qkv`` names q_proj, k_proj and v_proj, a gated ``linear_fc1`` names the gate and up
projections, an expert's fc1 / fc2 its own (Grok-1 ``linear`` / ``linear_v`` / ``linear_1``,
Mixtral ``w1`` / ``w3`` / ``w2``). So the pieces come from the rule table, not from per-family lists:

    piece     the HF weight it adapts                      A (stored, TP1 local name)
    q         model.layers.3.self_attn.q_proj.weight       decoder.layers.3.self_attention.linear_qkv_lora.lora_A.q
    gate (e)  model.layers.3.moe_block.experts.5.linear.weight
                                                           decoder.layers.3.mlp.experts_lora.lora_A.gate [5]

Merged:  W' = W + (alpha / r) B A, computed in fp32, then cast to W's dtype (or --params-dtype).
PEFT:    ``base_model.model.<module>.lora_A.weight`` = A [r, in], ``...lora_B.weight`` = B [out, r],
         and ``adapter_config.json`` with ``target_modules`` = the HF leaf names (PEFT 0.17+ maps
         Mixtral's per-expert w1 / w3 / w2 onto transformers 5's fused experts when it loads them).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from moetrain.checkpoint_formats.errors import ConversionError
from moetrain.finetune.lora.adapter_checkpoint import AdapterCheckpoint
from moetrain.models.config import ModelConfig
from moetrain.models.weight_maps import RankCoord, ShardLayout, bound_tensors

# megatron-core module of a TP1 / PP1 / EP1 weight -> (LoRA target, adapter module, its pieces)
_WEIGHT = re.compile(r"^(decoder\.layers\.\d+\.)(self_attention|mlp)\.(?:experts\.local_experts\.(\d+)\.)?"
                     r"(linear_qkv|linear_proj|linear_fc1|linear_fc2|router)\.weight$")
_PIECES = {"linear_qkv": ("q", "k", "v"), "linear_fc1": ("gate", "up"), "linear_proj": (None,),
           "linear_fc2": (None,)}
_EXPERT_PIECES = {"linear_fc1": ("gate", "up"), "linear_fc2": ("down",)}


@dataclass(frozen=True)
class AdapterPiece:
    hf_weight: str  # the base weight it adapts, e.g. model.layers.3.self_attn.q_proj.weight
    a_name: str  # TP1 local names of its factors in the adapter checkpoint
    b_name: str
    expert: int | None  # index into the stacked [E, ...] factors of an expert adapter
    shape: tuple[int, int]  # the adapted weight's [out, in]

    @property
    def hf_module(self) -> str:
        return self.hf_weight.removesuffix(".weight")


@dataclass(frozen=True)
class AdapterLayout:
    pieces: list[AdapterPiece]
    replaced: dict[str, str]  # HF weight -> TP1 local name: weights trained whole (the router)


def adapter_layout(cfg: ModelConfig, targets) -> AdapterLayout:
    """The pieces of an adapter on ``targets`` for this model, in HF checkpoint order."""
    from moetrain.models.common.weight_map import hf_shape, model_dims

    dims, targets = model_dims(cfg), set(targets)
    pieces, replaced = [], {}
    for b in bound_tensors(cfg, ShardLayout(), RankCoord(0, 0, 0)):
        m = _WEIGHT.match(b.mcore)
        if not m or m.group(4) not in targets:
            continue
        layer, parent, expert, target = m.group(1), m.group(2), m.group(3), m.group(4)
        if target == "router":
            replaced[b.hf[0]] = b.mcore
            continue
        if expert is None:
            stem, names = f"{layer}{parent}.{target}_lora", _PIECES[target]
        else:
            stem, names = f"{layer}mlp.experts_lora", _EXPERT_PIECES[target]
        for i, (piece, hf) in enumerate(zip(names, b.hf)):
            suffix = f".{piece}" if piece else ""
            shape = hf_shape(b.rule, i, dims)
            pieces.append(AdapterPiece(hf, f"{stem}.lora_A{suffix}", f"{stem}.lora_B{suffix}",
                                       None if expert is None else int(expert), (shape[0], shape[1])))
    return AdapterLayout(pieces, replaced)


class AdapterSource:
    """The adapter checkpoint's factors, by piece; validated as a whole from its metadata first."""

    def __init__(self, adapter: AdapterCheckpoint) -> None:
        from moetrain.checkpoint_formats.torch_dist import TorchDistRankReader, global_key

        self.adapter = adapter
        self.layout = adapter_layout(adapter.model_cfg, adapter.targets)
        self._reader = TorchDistRankReader(adapter.path, padded_vocab_size=adapter.model_cfg.vocab_size)
        cfg, r = adapter.model_cfg, adapter.r
        expected: dict[str, tuple[int, ...]] = {}
        for p in self.layout.pieces:
            out, inp = p.shape
            for name, shape in ((p.a_name, (r, inp)), (p.b_name, (out, r))):
                key, _ = global_key(name)
                lead = (cfg.num_layers, cfg.num_experts) if p.expert is not None else (cfg.num_layers,)
                expected[key] = (*lead, *shape)
        for name in self.layout.replaced.values():
            key, _ = global_key(name)
            expected[key] = (cfg.num_layers, cfg.num_experts, cfg.hidden_size)
        where = adapter.path
        self.stored = {}
        for key, shape in expected.items():
            md = self._reader.tensors.get(key)
            if md is None:
                raise ConversionError(f"tensor {key!r} is missing from {where} (the adapter says it adapts "
                                      f"{' '.join(adapter.targets)})")
            if tuple(md.size) != shape:
                raise ConversionError(f"tensor {key!r} in {where}: shape {tuple(md.size)}, expected {shape} "
                                      f"for rank {r} on the base model")
            self.stored[key] = md
        unknown = sorted(set(self._reader.model_keys()) - set(expected))
        if unknown:
            raise ConversionError(f"tensor {unknown[0]!r} in {where} is not an adapter of "
                                  f"{' '.join(adapter.targets)} ({len(unknown)} such tensors)")
        self._cache: dict[str, torch.Tensor] = {}

    def _read(self, name: str) -> torch.Tensor:
        if name not in self._cache:
            if len(self._cache) > 16:  # an expert adapter's factors are read once per layer
                self._cache.clear()
            self._cache[name] = self._reader.tensor(RankCoord(0, 0, 0), name)
        return self._cache[name]

    def factors(self, piece: AdapterPiece) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [r, in], B [out, r]) of one piece, fp32 as trained."""
        a, b = self._read(piece.a_name), self._read(piece.b_name)
        if piece.expert is not None:
            a, b = a[piece.expert], b[piece.expert]
        return a, b

    def replacement(self, hf_weight: str) -> torch.Tensor:
        return self._reader.tensor(RankCoord(0, 0, 0), self.layout.replaced[hf_weight])


def merged_getter(get, source: AdapterSource):
    """``get(hf_name)`` of the base, with every adapted weight merged: W + (alpha/r) B A in fp32,
    then cast back to W's dtype. Returns (getter, counter of merged / replaced weights)."""
    by_weight = {p.hf_weight: p for p in source.layout.pieces}
    scale = source.adapter.scale
    counts = {"merged": 0, "replaced": 0}

    def merged(name: str) -> torch.Tensor:
        w = get(name)
        piece = by_weight.get(name)
        if piece is not None:
            a, b = source.factors(piece)
            counts["merged"] += 1
            return (w.float() + scale * (b.float() @ a.float())).to(w.dtype)
        if name in source.layout.replaced:
            counts["replaced"] += 1
            return source.replacement(name).to(w.dtype)
        return w

    return merged, counts


PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_STEM = "adapter_model"  # adapter_model.safetensors, as PEFT's save_pretrained names it
PEFT_PREFIX = "base_model.model."


def peft_config(adapter: AdapterCheckpoint, base_name: str) -> dict:
    """PEFT's LoraConfig for these adapters (target_modules are the HF leaf module names)."""
    if adapter.targets and "router" in adapter.targets:
        raise ConversionError(f"--save-lora-to-hf: {adapter.path} also trained the router weights "
                              "(--lora-target-modules router), which a PEFT LoRA adapter cannot hold; "
                              "write merged weights instead (--lora-load without --save-lora-to-hf)")
    leaves = sorted({p.hf_module.rpartition(".")[2] for p in adapter_layout(adapter.model_cfg, adapter.targets).pieces})
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name,
            "r": adapter.r, "lora_alpha": adapter.alpha, "lora_dropout": 0.0, "target_modules": leaves,
            "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
            "init_lora_weights": True, "modules_to_save": None, "inference_mode": True,
            "rank_pattern": {}, "alpha_pattern": {}}


def write_peft_adapter(source: AdapterSource, out_dir: Path, base_name: str, dtype: torch.dtype | None,
                       progress=None) -> tuple[int, int]:
    """``adapter_config.json`` + ``adapter_model.safetensors`` into ``out_dir``, one factor at a time.
    Returns (tensors, bytes) written."""
    from moetrain.checkpoint_formats.safetensors_writer import PlannedTensor, StreamingSafetensorsWriter

    config = peft_config(source.adapter, base_name)
    r, dtype = source.adapter.r, dtype or torch.float32
    plan, order = [], []
    for p in source.layout.pieces:
        out, inp = p.shape
        for kind, shape in (("lora_A", (r, inp)), ("lora_B", (out, r))):
            plan.append(PlannedTensor(f"{PEFT_PREFIX}{p.hf_module}.{kind}.weight", shape, dtype))
        order.append(p)
    writer = StreamingSafetensorsWriter(out_dir, plan, max_shard_bytes=2**62, file_stem=PEFT_WEIGHTS_STEM)
    try:
        for p in order:
            a, b = source.factors(p)
            for kind, t in (("lora_A", a), ("lora_B", b)):
                writer.add(f"{PEFT_PREFIX}{p.hf_module}.{kind}.weight", t.to(dtype).contiguous())
            if progress is not None:
                progress.update(2, (a.numel() + b.numel()) * torch.finfo(dtype).bits // 8)
        writer.finish()
    finally:
        writer.abort()
    (out_dir / PEFT_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return writer.tensors_written, writer.bytes_written
