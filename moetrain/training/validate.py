"""Everything that can be checked before a process group or a model exists.

``resolve`` turns a ``PretrainConfig`` plus the world size into the concrete run (flavor with
overrides and tokenizer vocabulary, layout, micro-batch count, log dir, checkpoint to load) or
raises one ``ConfigError`` / ``LayoutError`` whose message names the flags involved. It is cheap
(no megatron-core model import), so ``torchrun`` users see a bad configuration in seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from moetrain.config import ConfigError, PretrainConfig
from moetrain.models.config import ModelConfig
from moetrain.parallel import ParallelDims, default_expert_tp, parse_num_layer_list
from moetrain.training import checkpointing, converted_load
from moetrain.training.data_splits import check_splits


@dataclass
class ResolvedRun:
    cfg: PretrainConfig
    model_cfg: ModelConfig
    dims: ParallelDims
    seq_length: int
    num_microbatches: int
    tokenizer: object | None
    log_dir: Path
    load_iteration: int | None  # None: start from scratch
    load_converted: bool = False  # --load is a converted per-rank checkpoint (weights only)
    notes: list[str] = field(default_factory=list)  # start-up lines (rank 0 prints them once)


def _model_config(cfg: PretrainConfig, tokenizer) -> tuple[ModelConfig, list[str]]:
    """The run's model and the start-up lines about it (how flags without --model differ from the
    family's flavor)."""
    from moetrain.models import get_flavor, list_flavors

    model_cfg, notes = _flavor_or_flags(cfg, tokenizer, get_flavor, list_flavors)
    limit = cfg.max_position_embeddings
    if limit is not None and model_cfg.seq_length > limit:
        raise ConfigError(f"--seq-length {model_cfg.seq_length} exceeds --max-position-embeddings {limit}")
    return model_cfg, notes


def _flavor_or_flags(cfg: PretrainConfig, tokenizer, get_flavor, list_flavors) -> tuple[ModelConfig, list[str]]:
    overrides = dict(cfg.model_overrides)
    if tokenizer is not None and "vocab_size" not in overrides:
        overrides["vocab_size"] = tokenizer.vocab_size  # Megatron: the tokenizer decides the vocabulary
    if cfg.model is None:
        from moetrain.compat.architecture import model_from_flags

        return model_from_flags(overrides, cfg.training.seq_length)
    if cfg.model not in list_flavors():
        raise ConfigError(f"--model {cfg.model!r} is not a known flavor; choose one of {', '.join(list_flavors())}")
    if cfg.training.seq_length is not None:
        overrides["seq_length"] = cfg.training.seq_length
    try:
        return get_flavor(cfg.model, **overrides), []
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def _dims(cfg: PretrainConfig, world_size: int, num_layers: int, dist_backend: str) -> ParallelDims:
    p = cfg.parallel
    vpp = None
    if p.num_layers_per_virtual_pipeline_stage:
        per_stage = num_layers // p.pipeline_model_parallel_size
        if per_stage % p.num_layers_per_virtual_pipeline_stage:
            raise ConfigError(f"--num-layers-per-virtual-pipeline-stage {p.num_layers_per_virtual_pipeline_stage} "
                              f"does not divide the {per_stage} layers of each pipeline stage")
        vpp = per_stage // p.num_layers_per_virtual_pipeline_stage
    return ParallelDims(world_size=world_size, tp=p.tensor_model_parallel_size, pp=p.pipeline_model_parallel_size,
                        ep=p.expert_model_parallel_size,
                        expert_tp=p.expert_tensor_parallel_size or default_expert_tp(p.tensor_model_parallel_size,
                                                                                     dist_backend),
                        vpp=vpp if vpp and vpp > 1 else None, num_layer_list=parse_num_layer_list(p.num_layer_list),
                        # Megatron-LM turns sequence parallelism off without TP (its recipes pass it anyway)
                        sequence_parallel=p.sequence_parallel and p.tensor_model_parallel_size > 1)


def _check_data(cfg: PretrainConfig) -> None:
    from moetrain.training.sft_data import is_instruction_data

    paths, _ = cfg.data.blend()
    for prefix in paths:
        if is_instruction_data(prefix):
            raise ConfigError(f"--data-path {prefix} is an instruction dataset (input_ids / labels / attention_mask "
                              "from an *InstructionHandler): fine-tune on it with moetrain.finetune.sft, or add "
                              "--is-instruction-dataset")
        missing = [s for s in (".bin", ".idx") if not Path(prefix + s).is_file()]
        if missing:
            raise ConfigError(f"--data-path {prefix}: {' and '.join(prefix + s for s in missing)} not found "
                              "(give the prefix written by tools/preprocess_data.py, e.g. data/corpus_text_document)")
    # An empty split would make megatron-core's GPTDataset loop forever, silently.
    check_splits(paths, cfg.data.split)


def _check_instruction_data(cfg: PretrainConfig, seq_length: int) -> None:
    from moetrain.training.sft_data import check_instruction_data, split_rows

    paths, weights = cfg.data.blend()
    if len(paths) != 1 or weights is not None:
        raise ConfigError("--is-instruction-dataset takes one --data-path (the preprocessor's --output-prefix); "
                          "blend instruction sets at preprocessing time")
    info = check_instruction_data(paths[0], seq_length, cfg.sft.prompt_type)
    split_rows(info.rows, cfg.data.split, info.prefix)


def _tokenizer(cfg: PretrainConfig):
    d = cfg.data
    if d.tokenizer_type is None:
        raise ConfigError("--tokenizer-type is required (e.g. SentencePieceTokenizer with --tokenizer-model, "
                          "or PretrainedFromHF with --tokenizer-name-or-path)")
    from moetrain.data.tokenizers import build_tokenizer

    try:
        return build_tokenizer(d.tokenizer_type, name_or_path=d.tokenizer_name_or_path, model_file=d.tokenizer_model)
    except (OSError, ValueError) as e:
        raise ConfigError(f"tokenizer: {e}") from None


def log_dir_for(cfg: PretrainConfig) -> Path:
    if cfg.logging.log_dir:
        return Path(cfg.logging.log_dir)
    if os.environ.get("MOETRAIN_LOG_DIR"):
        return Path(os.environ["MOETRAIN_LOG_DIR"])
    if cfg.checkpoint.save:
        return Path(cfg.checkpoint.save) / "logs"
    return Path("runs") / (cfg.model or "from-flags")


def _check_lora(cfg: PretrainConfig) -> None:
    lora = cfg.lora
    if lora.lora_load and not lora.enabled:
        raise ConfigError(f"--lora-load {lora.lora_load} needs --lora-target-modules (the adapters to load)")
    if not lora.enabled:
        return
    from moetrain.finetune.lora.apply import check_targets

    try:
        check_targets(lora.lora_target_modules)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not cfg.sft.is_instruction_dataset:
        raise ConfigError("--lora-target-modules: LoRA fine-tunes on instruction data (moetrain.finetune.sft or "
                          "--is-instruction-dataset)")
    if lora.lora_load and not cfg.checkpoint.load:
        raise ConfigError(f"--lora-load {lora.lora_load} needs --load (the base model the adapters belong to)")


def _checkpoint_meta(ck, latest: int) -> tuple[int, dict]:
    """The checkpoint whose metadata the model is checked against before ranks start: --ckpt-step's,
    else the pointer's, else (its moetrain.json damaged) the newest older one with readable metadata;
    the ranks then check every file (checkpoint_integrity) and choose the same way."""
    from moetrain.training.checkpoint_integrity import kept_iterations, resume_candidates

    root = Path(ck.load)
    if ck.ckpt_step is not None:
        kept = kept_iterations(root, max(latest, ck.ckpt_step))
        if ck.ckpt_step not in kept:
            raise ConfigError(f"--ckpt-step {ck.ckpt_step}: {root} holds no {checkpointing.iter_dir_name(ck.ckpt_step)}"
                              f" (it holds iterations {', '.join(map(str, sorted(kept))) or 'none'})")
        return ck.ckpt_step, checkpointing.read_meta(root, ck.ckpt_step)
    candidates = resume_candidates(root, latest) if not ck.no_checkpoint_fallback else [latest]
    for iteration in candidates:
        try:
            return iteration, checkpointing.read_meta(root, iteration)
        except (ConfigError, ValueError, OSError):
            if iteration == candidates[-1]:
                raise ConfigError(f"--load {root}: checkpoint {checkpointing.iter_dir_name(iteration)} has no "
                                  f"readable {checkpointing.META_FILE}, and no older checkpoint has one") from None
    raise AssertionError("unreachable")


def _check_adapter(cfg: PretrainConfig, model_cfg) -> None:
    """A --lora-load adapter that holds a checkpoint must be of this base, rank and target set
    (an empty --lora-load is where a new run's adapters will be saved)."""
    lora = cfg.lora
    if not lora.lora_load or checkpointing.read_latest(lora.lora_load) is None:
        return
    from moetrain.finetune.lora.adapter_checkpoint import check_adapter_fits, inspect_adapter

    adapter = inspect_adapter(lora.lora_load)
    check_adapter_fits(adapter, model_cfg, f"--load {cfg.checkpoint.load}", r=lora.lora_r,
                       targets=lora.lora_target_modules)


def resolve(cfg: PretrainConfig, world_size: int, dist_backend: str = "gloo") -> ResolvedRun:
    t = cfg.training
    _check_lora(cfg)
    if cfg.data.mock_data and cfg.sft.is_instruction_dataset:
        raise ConfigError("--mock-data is synthetic pretraining text; --is-instruction-dataset fine-tunes on an "
                          "instruction --data-path")
    # --mock-data needs no tokenizer: without one its tokens span the model's vocabulary (pretrain_data).
    tokenizer = _tokenizer(cfg) if cfg.data.data_path or cfg.data.tokenizer_type else None
    model_cfg, model_notes = _model_config(cfg, tokenizer)
    dims = _dims(cfg, world_size, model_cfg.num_layers, dist_backend)
    dims.validate_model(model_cfg, dist_backend)
    num_microbatches = dims.num_microbatches(t.global_batch_size, t.micro_batch_size)
    ck = cfg.checkpoint
    if ck.save:
        import importlib.util

        # dist_checkpointing's writer calls psutil unconditionally; without it a save hangs.
        if importlib.util.find_spec("psutil") is None:
            raise ConfigError("--save needs the psutil package (megatron-core's checkpoint writer uses it): "
                              "pip install psutil")
    load_iteration = None
    load_converted = bool(ck.load) and converted_load.is_converted_checkpoint(ck.load)
    if load_converted:
        converted_load.check_converted(ck.load, model_cfg, dims)
    elif ck.load:
        load_iteration = checkpointing.read_latest(ck.load)
        if load_iteration is None and ck.finetune:
            raise ConfigError(f"--finetune: --load {ck.load} holds no checkpoint "
                              f"({checkpointing.TRACKER_FILE} missing)")
        if load_iteration is not None:
            load_iteration, meta = _checkpoint_meta(ck, load_iteration)
            checkpointing.check_compatible(meta["model_config"], model_cfg,
                                           f"{ck.load}/{checkpointing.iter_dir_name(load_iteration)}")
    _check_adapter(cfg, model_cfg)
    from moetrain.training.lr_schedule import schedule_iters

    schedule_iters(cfg.optimizer, t.train_iters)
    if cfg.data.eval_interval < 1:
        raise ConfigError("--eval-interval must be >= 1")
    if t.train_iters > 0 and cfg.sft.is_instruction_dataset:
        _check_instruction_data(cfg, model_cfg.seq_length)
    elif t.train_iters > 0 and not cfg.data.mock_data:
        _check_data(cfg)  # last: the files and their content
    return ResolvedRun(cfg=cfg, model_cfg=model_cfg, dims=dims, seq_length=model_cfg.seq_length,
                       num_microbatches=num_microbatches, tokenizer=tokenizer, log_dir=log_dir_for(cfg),
                       load_iteration=load_iteration, load_converted=load_converted,
                       notes=[*model_notes, *cfg.compat_notes])
