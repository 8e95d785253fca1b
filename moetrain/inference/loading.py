"""A checkpoint -> this rank's model shard for generation, at any TP / PP / EP layout.

Three kinds of ``--load`` directory, one loading path:
  trainer     moetrain.pretrain / sft checkpoints (megatron dist-checkpointing, torch_dist)
  converted   ckpt_converters/convert_ckpt.py output (the per-rank Megatron format)
  hf          a Hugging Face model directory (config.json + safetensors)
Each is opened as a getter of full HF-named tensors (the converter's sources:
``checkpoint_formats.mcore_source.MegatronSource``, ``checkpoint_formats.hf_dir.HFDirSource``) and
every rank builds its own shard with the weight map (``hf_to_mcore``) for the layout it runs. So
the saved layout never limits the generation layout, and the re-sharding is the converter's:
copies only, bit-exact.

:func:`inspect_checkpoint` needs no process group: the launcher calls it to check the model and the
layout before any rank starts.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from moetrain.config import ConfigError
from moetrain.models.config import ModelConfig


@dataclass
class CheckpointInfo:
    path: Path
    kind: str  # "trainer" | "converted" | "hf"
    model_cfg: ModelConfig
    tokenizer: dict  # tokenizer_type / tokenizer_model / tokenizer_name_or_path recorded by training ({} if none)
    flavor: str | None = None  # --model, for a dist-checkpoint without moetrain metadata


def _trainer_tokenizer(meta: dict | None) -> dict:
    data = ((meta or {}).get("args") or {}).get("data") or {}
    keys = ("tokenizer_type", "tokenizer_model", "tokenizer_name_or_path")
    return {k: data[k] for k in keys if data.get(k)}


def inspect_checkpoint(load_dir: str | Path, flavor: str | None = None) -> CheckpointInfo:
    """What ``--load`` holds: its kind and model (and the tokenizer training used), cheaply.

    With ``flavor`` (--model) the checkpoint's model must be that flavor's architecture; every field
    that differs is named."""
    from moetrain.checkpoint_formats.directory import META_FILE, TRACKER_FILE, read_meta
    from moetrain.checkpoint_formats.legacy import (
        LegacyCheckpointError,
        is_legacy_checkpoint,
        read_legacy_meta,
    )
    from moetrain.checkpoint_formats.mg_dir import torch_dist_dir
    from moetrain.models import get_flavor
    from moetrain.models.hf_config import from_hf_config
    from moetrain.training.checkpointing import check_compatible

    path = Path(load_dir)
    if not path.is_dir():
        raise ConfigError(f"--load {path}: no such directory")
    wanted = None
    if flavor:
        try:
            wanted = get_flavor(flavor)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"--model: {e}") from None
    if (path / "config.json").is_file():
        try:
            cfg = from_hf_config(json.loads((path / "config.json").read_text()), name=f"hf:{path.name}")
        except (KeyError, ValueError) as e:
            raise ConfigError(f"--load {path}/config.json: {e}") from None
        info = CheckpointInfo(path, "hf", cfg, {"tokenizer_type": "PretrainedFromHF",
                                                "tokenizer_name_or_path": str(path)}
                              if (path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file() else {})
    elif is_legacy_checkpoint(path):
        try:
            meta = read_legacy_meta(path)
        except LegacyCheckpointError as e:
            raise ConfigError(f"--load {path}: {e}") from None
        info = CheckpointInfo(path, "converted", ModelConfig.from_dict(meta.model_config), {})
    else:
        ckpt = torch_dist_dir(path)
        if ckpt is None:
            raise ConfigError(f"--load {path}: not a checkpoint moetrain can read (a trainer checkpoint with "
                              f"{TRACKER_FILE}, a converted per-rank Megatron checkpoint, or a "
                              "Hugging Face directory with config.json)")
        meta = read_meta(ckpt)
        if meta is None and wanted is None:
            raise ConfigError(f"--load {ckpt} has no {META_FILE}; give the architecture with --model <flavor>")
        cfg = ModelConfig.from_dict(meta["model_config"]) if meta else wanted
        info = CheckpointInfo(path, "trainer", cfg, _trainer_tokenizer(meta), flavor=flavor)
    if wanted is not None:
        check_compatible(info.model_cfg.to_dict(), wanted, str(path))
    return info


def inference_model_config(cfg: ModelConfig) -> ModelConfig:
    """The same weights, configured for inference: no token dropping (capacity), no aux losses."""
    return dataclasses.replace(cfg, moe_expert_capacity_factor=None, moe_aux_loss_coeff=0.0, moe_z_loss_coeff=0.0)


def _getter(info: CheckpointInfo):
    """(get(hf_name) -> tensor, release()) over the checkpoint, whatever its kind."""
    from moetrain.checkpoint_formats.errors import ConversionError
    from moetrain.checkpoint_formats.hf_dir import HFDirSource
    from moetrain.checkpoint_formats.mcore_source import MegatronSource
    from moetrain.checkpoint_formats.mg_dir import open_megatron

    try:
        if info.kind == "hf":
            source = HFDirSource(info.path)
        else:
            mg = open_megatron(info.path, info.flavor)
            source = MegatronSource(mg.cfg, mg.reader)
    except ConversionError as e:
        raise ConfigError(f"--load {info.path}: {e}") from None
    return source.get, source.release


def load_model(info: CheckpointInfo, dims, dtype: str, batch_p2p_comm: bool, adapter=None):
    """This rank's model chunk with the checkpoint's weights, in eval mode (process groups for
    ``dims`` must exist). ``adapter`` (an AdapterCheckpoint): LoRA adapters on top of the base,
    loaded (re-sharded) from their checkpoint, not merged. Returns (model, padded vocabulary size)."""
    from megatron.core import parallel_state as ps
    from megatron.core.transformer.module import Float16Module

    from moetrain.device import get_backend
    from moetrain.models.builder import build_model
    from moetrain.models.param_count import padded_vocab_size
    from moetrain.models.weight_maps import RankCoord, ShardLayout, WeightMapError, hf_to_mcore
    from moetrain.training.transformer_config import RuntimeOptions, build_transformer_config

    cfg = inference_model_config(info.model_cfg)
    config = build_transformer_config(cfg, dims, RuntimeOptions(dtype=dtype, batch_p2p_comm=batch_p2p_comm))
    padded = padded_vocab_size(cfg.vocab_size, dims.tp)
    # megatron-core's parallel linears allocate on the device, moetrain's own modules (norms, the
    # stacked experts) on the default one; training's DDP moves every parameter into its device
    # buffers, generation has no DDP: move them here (a no-op on CPU).
    model = build_model(cfg, config, padded).to(get_backend().device())
    coord = RankCoord(ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
                      ps.get_expert_model_parallel_rank())
    layout = ShardLayout(tp=dims.tp, pp=dims.pp, ep=dims.ep, num_layer_list=dims.num_layer_list,
                         padded_vocab_size=padded)
    get, release = _getter(info)
    try:
        state = hf_to_mcore(info.model_cfg, get, layout, coord)
    except (WeightMapError, KeyError) as e:
        raise ConfigError(f"--load {info.path}: {e}") from None
    finally:
        release()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise ConfigError(f"--load {info.path}: rank {coord} of {dims.describe()} does not fit the model: "
                          f"missing {missing[:5]}, unexpected {list(unexpected)[:5]}")
    del state
    if adapter is not None:
        from moetrain.finetune.lora.apply import apply_lora
        from moetrain.training.checkpointing import load_adapter_weights

        apply_lora(model, set(adapter.targets), adapter.r, adapter.alpha, 0.0)
        load_adapter_weights(adapter.path, [model])
    if dtype != "fp32":
        model = Float16Module(config, model)  # casts the first stage's inputs, returns fp32 logits
    model.eval()
    return model, padded
