"""Typed configuration of a pretraining run, one dataclass per concern.

Field names are Megatron-LM's flag names with dashes turned into underscores
(``--tensor-model-parallel-size`` -> ``tensor_model_parallel_size``), so a flag, a key of a
``--config`` YAML/TOML file and a field read the same. There is no global args object: the
sections are passed explicitly to whoever needs them.

``__post_init__`` checks here are the ones that need no model and no world size; the checks that
do (layout, batch sizes vs data-parallel size, checkpoint compatibility) live in
``moetrain.training.validate`` and run before any heavy work starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the flag(s) involved."""


LR_DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root")


@dataclass
class ParallelSection:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    expert_model_parallel_size: int = 1
    # None: the backend's default (moetrain.parallel.default_expert_tp: TP on nccl / hccl, 1 on gloo)
    expert_tensor_parallel_size: int | None = None
    num_layer_list: str | None = None  # ModelLink's uneven pipeline split, e.g. "3,5"
    num_layers_per_virtual_pipeline_stage: int | None = None
    sequence_parallel: bool = False


@dataclass
class TrainingSection:
    micro_batch_size: int = 1
    global_batch_size: int = 8
    seq_length: int | None = None  # None: the flavor's seq_length
    train_iters: int = 10
    seed: int = 1234
    bf16: bool = False
    fp16: bool = False
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    init_method_std: float = 0.02
    recompute_granularity: str | None = None
    recompute_method: str | None = None
    recompute_num_layers: int | None = None
    moe_token_dispatcher_type: str = "alltoall"
    max_nan_iters: int = 10  # stop after this many NaN/inf losses in a row
    make_vocab_size_divisible_by: int = 128  # Megatron pads the vocabulary to a multiple of this x TP

    def __post_init__(self) -> None:
        if self.bf16 and self.fp16:
            raise ConfigError("--bf16 and --fp16 are mutually exclusive")
        for name in ("micro_batch_size", "global_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if self.train_iters < 0:
            raise ConfigError("--train-iters must be >= 0")
        if self.seq_length is not None and self.seq_length < 2:
            raise ConfigError("--seq-length must be >= 2")

    @property
    def dtype(self) -> str:
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "fp32"


@dataclass
class OptimizerSection:
    optimizer: str = "adam"
    lr: float = 1e-4
    min_lr: float = 0.0
    lr_decay_style: str = "cosine"
    lr_decay_iters: int | None = None  # None: --train-iters
    lr_warmup_iters: int = 0
    lr_warmup_fraction: float | None = None
    lr_warmup_init: float = 0.0
    weight_decay: float = 0.01
    clip_grad: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    use_distributed_optimizer: bool = False
    # fp16 loss scaling, as Megatron-LM: a fixed --loss-scale, or dynamic scaling that starts at
    # --initial-loss-scale and halves on overflow (skipping that step) after --hysteresis overflows.
    loss_scale: float | None = None
    initial_loss_scale: float = 2.0**32
    min_loss_scale: float = 1.0
    loss_scale_window: int = 1000
    hysteresis: int = 2

    def __post_init__(self) -> None:
        if self.lr_decay_style not in LR_DECAY_STYLES:
            raise ConfigError(f"--lr-decay-style must be one of {LR_DECAY_STYLES}, got {self.lr_decay_style!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"--optimizer must be adam or sgd, got {self.optimizer!r}")
        if self.min_lr > self.lr:
            raise ConfigError(f"--min-lr {self.min_lr} is larger than --lr {self.lr}")
        if self.lr_warmup_fraction is not None and self.lr_warmup_iters:
            raise ConfigError("give --lr-warmup-iters or --lr-warmup-fraction, not both")
        if self.initial_loss_scale < self.min_loss_scale:
            raise ConfigError(f"--initial-loss-scale {self.initial_loss_scale} is below --min-loss-scale "
                              f"{self.min_loss_scale}")


@dataclass
class DataSection:
    # Megatron's blend syntax: ["pathA"] or ["0.3", "pathA", "0.7", "pathB"] (path = prefix of .bin/.idx)
    data_path: list[str] = field(default_factory=list)
    split: str = "969,30,1"
    tokenizer_type: str | None = None
    tokenizer_model: str | None = None
    tokenizer_name_or_path: str | None = None
    data_cache_path: str | None = None
    eval_interval: int = 1000
    eval_iters: int = 10
    eod_mask_loss: bool = False
    # Megatron-LM's --mock-data: megatron-core's MockGPTDataset (synthetic tokens), no --data-path.
    mock_data: bool = False

    def __post_init__(self) -> None:
        if self.mock_data and self.data_path:
            raise ConfigError(f"--mock-data and --data-path {' '.join(self.data_path)} exclude each other: "
                              "--mock-data trains on synthetic tokens, --data-path on a preprocessed corpus")

    def blend(self) -> tuple[list[str], list[float] | None]:
        """(paths, weights) from ``--data-path``; weights None for a single unweighted list."""
        items = list(self.data_path)
        if not items:
            raise ConfigError("--data-path is required (prefix of a preprocessed .bin/.idx pair), "
                              "or --mock-data for synthetic tokens")
        if len(items) == 1:
            return items, None
        try:
            float(items[0])
        except ValueError:
            return items, None  # several unweighted paths
        if len(items) % 2:
            raise ConfigError(f"--data-path {' '.join(items)!r}: expected weight/path pairs like '0.3 pathA 0.7 pathB'")
        try:
            weights = [float(w) for w in items[0::2]]
        except ValueError:
            raise ConfigError(f"--data-path {' '.join(items)!r}: every other item must be a weight") from None
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError("--data-path weights must be non-negative with a positive sum")
        return items[1::2], weights


@dataclass
class CheckpointSection:
    save: str | None = None
    load: str | None = None
    save_interval: int | None = None  # None: only at the end
    keep_last_k: int | None = None  # None: keep all
    finetune: bool = False  # load weights only; iteration, optimizer, scheduler and data restart
    no_load_optim: bool = False
    no_load_rng: bool = False
    no_save_optim: bool = False
    # A damaged latest checkpoint (checkpoint_integrity): resume from the newest intact older one,
    # or refuse with --no-checkpoint-fallback. --ckpt-step N (Megatron-LM's): exactly iteration N.
    no_checkpoint_fallback: bool = False
    ckpt_step: int | None = None
    save_failure: str = "stop"  # a save that fails (full disk): "stop" the run, or "continue" with a warning

    def __post_init__(self) -> None:
        if self.keep_last_k is not None and self.keep_last_k < 1:
            raise ConfigError("--keep-last-k must be >= 1")
        if self.save_interval is not None and self.save_interval < 1:
            raise ConfigError("--save-interval must be >= 1")
        if self.save_failure not in ("stop", "continue"):
            raise ConfigError(f"--save-failure {self.save_failure}: choose stop or continue")


@dataclass
class SftSection:
    """Supervised fine-tuning on the preprocessor's instruction datasets (MindSpeed-LLM's flags)."""

    is_instruction_dataset: bool = False  # --data-path is instruction data (input_ids / labels / mask)
    prompt_type: str | None = None  # checked against the one the data was preprocessed with
    variable_seq_lengths: bool = False  # pad each micro-batch to its longest row (x8), not --seq-length
    reset_attention_mask: bool = False  # packed samples do not attend to each other
    reset_position_ids: bool = False  # positions restart at every packed sample
    no_shuffle: bool = False  # epochs in stored order instead of a seeded shuffle per epoch


@dataclass
class LoraSection:
    """LoRA fine-tuning (MindSpeed-LLM's flags); on when --lora-target-modules names any module."""

    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    # any of linear_qkv linear_proj linear_fc1 linear_fc2 (experts included) router
    lora_target_modules: list[str] = field(default_factory=list)
    lora_load: str | None = None  # an adapter checkpoint (a LoRA run's --save); the base is --load

    def __post_init__(self) -> None:
        if self.lora_target_modules and self.lora_r < 1:
            raise ConfigError(f"--lora-r {self.lora_r}: the adapter rank must be at least 1")
        if self.lora_dropout < 0 or self.lora_dropout >= 1:
            raise ConfigError(f"--lora-dropout {self.lora_dropout}: must be in [0, 1)")

    @property
    def enabled(self) -> bool:
        return bool(self.lora_target_modules)


@dataclass
class LoggingSection:
    log_interval: int = 1
    log_dir: str | None = None  # None: $MOETRAIN_LOG_DIR, else <save>/logs, else ./runs/<model>
    tensorboard: bool = True


@dataclass
class PretrainConfig:
    # A flavor name (moetrain.models.list_flavors()); None: the architecture flags describe the
    # whole model (a Megatron-LM recipe without --model: moetrain.compat.architecture).
    model: str | None = "llama-tiny"
    model_overrides: dict = field(default_factory=dict)  # ModelConfig field -> value
    device: str | None = None  # npu | cuda | cpu; None: auto
    dry_run: bool = False  # resolve and print the run (model, layout, planned memory), start nothing
    # Other frameworks' flags (moetrain.compat.megatron_flags): the start-up lines they produce, and
    # Megatron-LM's --max-position-embeddings, checked against the sequence length.
    compat_notes: list = field(default_factory=list)
    max_position_embeddings: int | None = None
    parallel: ParallelSection = field(default_factory=ParallelSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    data: DataSection = field(default_factory=DataSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    sft: SftSection = field(default_factory=SftSection)
    lora: LoraSection = field(default_factory=LoraSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {
    "parallel": ParallelSection,
    "training": TrainingSection,
    "optimizer": OptimizerSection,
    "data": DataSection,
    "checkpoint": CheckpointSection,
    "logging": LoggingSection,
    "sft": SftSection,
    "lora": LoraSection,
}
