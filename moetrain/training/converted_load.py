"""Loading a converted checkpoint: the per-rank Megatron format (iter_*/mp_rank_*/model_optim_rng.pt)
that ckpt_converters/convert_ckpt.py writes ("converted" is this module's alias for that format).

Such a checkpoint holds model weights only (no optimizer, scheduler, RNG or data position), already
sharded for one TP / PP / EP layout: training starts at iteration 0 from those weights, like
Megatron-LM's "release" checkpoints. A checkpoint sharded for another layout is refused with the
convert_ckpt.py command that re-shards it.
"""

from __future__ import annotations

from pathlib import Path

from moetrain.config import ConfigError
from moetrain.models.config import ModelConfig
from moetrain.training import checkpointing


def is_converted_checkpoint(root: str | Path) -> bool:
    from moetrain.checkpoint_formats.legacy import is_legacy_checkpoint

    return is_legacy_checkpoint(root)


def check_converted(root: str | Path, model_cfg: ModelConfig, dims) -> None:
    """Before any process group: the checkpoint's model and TP / PP / EP layout must be this run's."""
    from moetrain.checkpoint_formats.legacy import LegacyCheckpointError, read_legacy_meta

    try:
        meta = read_legacy_meta(root)
    except LegacyCheckpointError as e:
        raise ConfigError(f"--load {root}: {e}") from None
    checkpointing.check_compatible(meta.model_config, model_cfg, str(meta.iter_dir))
    saved = meta.layout
    saved_list = tuple(saved.num_layer_list) if saved.num_layer_list else None
    if (saved.tp, saved.pp, saved.ep, saved_list) != (dims.tp, dims.pp, dims.ep, dims.num_layer_list):
        raise ConfigError(
            f"--load {root} is sharded for TP{saved.tp} PP{saved.pp} EP{saved.ep}"
            f"{f' num-layer-list {saved_list}' if saved_list else ''} but this run is {dims.describe()}; re-shard it: "
            f"python ckpt_converters/convert_ckpt.py --model-type-hf <type> --load-model-type mg --save-model-type mg "
            f"--load-dir {root} --save-dir <new dir> --target-tensor-parallel-size {dims.tp} "
            f"--target-pipeline-parallel-size {dims.pp} --target-expert-parallel-size {dims.ep}")
    if dims.expert_tp != saved.expert_tp and model_cfg.is_moe:
        raise ConfigError(f"--load {root} holds experts sharded over EP only (expert-TP {saved.expert_tp}) but this "
                          f"run uses expert-TP {dims.expert_tp} (the default on this backend is TP); add "
                          f"--expert-tensor-parallel-size {saved.expert_tp}")
    if dims.vpp and dims.vpp > 1:
        raise ConfigError(f"--load {root} is in the per-rank Megatron format (iter_*/mp_rank_*/model_optim_rng.pt); "
                          f"it cannot be loaded with virtual pipeline stages — drop "
                          f"--num-layers-per-virtual-pipeline-stage or load a trainer checkpoint")


def load_converted_weights(root: str | Path, model_chunks: list, optimizer, dims, padded_vocab: int) -> None:
    """Load this rank's shard into the (DDP-wrapped) model; the optimizer's main params follow."""
    from megatron.core import parallel_state as ps

    from moetrain.checkpoint_formats.legacy import LegacyCheckpointError, load_rank_state_dict
    from moetrain.models.weight_maps import RankCoord, ShardLayout

    coord = RankCoord(ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
                      ps.get_expert_model_parallel_rank())
    layout = ShardLayout(tp=dims.tp, pp=dims.pp, ep=dims.ep, num_layer_list=dims.num_layer_list,
                         padded_vocab_size=padded_vocab)
    try:
        state_dict, _ = load_rank_state_dict(root, coord, layout)
    except LegacyCheckpointError as e:
        raise ConfigError(f"--load {root}: {e}") from None
    (chunk,) = checkpointing.unwrap_model_chunks(model_chunks)
    missing, unexpected = chunk.load_state_dict(state_dict, strict=False)
    missing = checkpointing.missing_in_part(missing, "base")  # LoRA adapters are not in a converted model
    if missing or unexpected:
        raise ConfigError(f"--load {root}: rank {coord} does not fit this model: missing {missing[:5]}, "
                          f"unexpected {list(unexpected)[:5]}")
    if optimizer is not None:
        optimizer.reload_model_params()  # fp32 main copies and distributed-optimizer shards follow
