"""Conversion options (the CLI's flags, typed) and the final report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from moetrain.checkpoint_formats.errors import ConversionError
from moetrain.models.common.weight_map import ShardLayout
from moetrain.models.registry import converter_model_types
from moetrain.parallel import LayoutError

# --model-type-hf values: each family declares its own (moetrain/models/<family>/family.py).
MODEL_TYPES = converter_model_types()
# The layout rules are the trainer's (ParallelDims); the converter's flags name the target layout.
TARGET_FLAGS = {"--tensor-model-parallel-size": "--target-tensor-parallel-size",
                "--pipeline-model-parallel-size": "--target-pipeline-parallel-size",
                "--expert-model-parallel-size": "--target-expert-parallel-size"}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass
class ConvertOptions:
    model_type_hf: str
    load_model_type: str  # "hf" | "mg"
    save_model_type: str  # "hf" | "mg"
    load_dir: Path
    save_dir: Path
    tp: int = 1
    pp: int = 1
    ep: int = 1
    num_layer_list: tuple[int, ...] | None = None
    params_dtype: str | None = None  # None: keep the source dtype
    make_vocab_size_divisible_by: int = 128
    model: str | None = None  # flavor name: the architecture, instead of config.json / checkpoint metadata
    overwrite: bool = False
    keep_optimizer: bool | None = None  # None: drop (and say so)
    max_shard_size: str = "2GB"
    tokenizer_dir: Path | None = None
    iteration: int = 1  # iteration number of a written Megatron checkpoint
    progress: bool = True
    lora_load: Path | None = None  # a LoRA adapter checkpoint: merged into the weights written
    save_lora_to_hf: bool = False  # write the --lora-load adapter as a Hugging Face PEFT adapter instead

    def __post_init__(self) -> None:
        self.load_dir, self.save_dir = Path(self.load_dir), Path(self.save_dir)
        if self.model_type_hf not in MODEL_TYPES:
            raise ConversionError(f"--model-type-hf must be one of {', '.join(MODEL_TYPES)}, got {self.model_type_hf!r}")
        for flag, value in (("--load-model-type", self.load_model_type), ("--save-model-type", self.save_model_type)):
            if value not in ("hf", "mg"):
                raise ConversionError(f"{flag} must be 'hf' or 'mg', got {value!r}")
        if self.load_model_type == "hf" and self.save_model_type == "hf":
            raise ConversionError("hf -> hf is not a conversion; use --save-model-type mg")
        if self.make_vocab_size_divisible_by < 1:
            raise ConversionError(f"--make-vocab-size-divisible-by must be >= 1, got {self.make_vocab_size_divisible_by}")
        try:
            self.target_layout()
        except LayoutError as e:
            raise e.with_flags(TARGET_FLAGS) from None
        if self.params_dtype is not None and self.params_dtype not in DTYPES:
            raise ConversionError(f"--params-dtype must be one of {', '.join(DTYPES)}, got {self.params_dtype!r}")
        if self.lora_load is not None:
            self.lora_load = Path(self.lora_load)
            if self.load_model_type != "mg":
                raise ConversionError("--lora-load: the base must be a Megatron checkpoint (--load-model-type mg), "
                                      "the one the adapters were trained on")
            if self.keep_optimizer:
                raise ConversionError("--keep-optimizer: merged LoRA weights have no optimizer state to keep")
        if self.save_lora_to_hf and (self.lora_load is None or self.save_model_type != "hf"):
            raise ConversionError("--save-lora-to-hf writes the adapter of --lora-load DIR as a PEFT adapter; "
                                  "it needs --lora-load and --save-model-type hf")
        if self.save_model_type == "hf" and self.keep_optimizer:
            raise ConversionError("--keep-optimizer: a Hugging Face checkpoint holds no optimizer state")

    def target_layout(self, padded_vocab_size: int | None = None) -> ShardLayout:
        """The layout to shard for: the one layout type, with the trainer's rules."""
        return ShardLayout(tp=self.tp, pp=self.pp, ep=self.ep, num_layer_list=self.num_layer_list,
                           padded_vocab_size=padded_vocab_size)

    @property
    def dtype(self) -> torch.dtype | None:
        return DTYPES[self.params_dtype] if self.params_dtype else None


@dataclass
class ConvertReport:
    direction: str
    tensors_read: int = 0
    bytes_read: int = 0
    tensors_written: int = 0
    bytes_written: int = 0
    replicas_skipped: int = 0  # TP / EP copies and tied-output copies in a Megatron source, checked not read
    optimizer: str = "none in the source"
    lora: str = ""  # what was done with a --lora-load adapter
    seconds: float = 0.0

    def line(self) -> str:
        extra = f", {self.replicas_skipped} replica tensors checked and skipped" if self.replicas_skipped else ""
        extra += f"; {self.lora}" if self.lora else ""
        return (f"{self.direction}: read {self.tensors_read} tensors ({self.bytes_read / 1e9:.3f} GB), wrote "
                f"{self.tensors_written} tensors ({self.bytes_written / 1e9:.3f} GB){extra}; "
                f"optimizer state: {self.optimizer}; {self.seconds:.1f} s")
