"""Conversion options (the CLI's flags, typed) and the final report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from moetrain.checkpoint_formats.errors import ConversionError

MODEL_TYPES = ("grok1", "llama2", "llama3", "mixtral")
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

    def __post_init__(self) -> None:
        self.load_dir, self.save_dir = Path(self.load_dir), Path(self.save_dir)
        if self.model_type_hf not in MODEL_TYPES:
            raise ConversionError(f"--model-type-hf must be one of {', '.join(MODEL_TYPES)}, got {self.model_type_hf!r}")
        for flag, value in (("--load-model-type", self.load_model_type), ("--save-model-type", self.save_model_type)):
            if value not in ("hf", "mg"):
                raise ConversionError(f"{flag} must be 'hf' or 'mg', got {value!r}")
        if self.load_model_type == "hf" and self.save_model_type == "hf":
            raise ConversionError("hf -> hf is not a conversion; use --save-model-type mg")
        for flag, value in (("--target-tensor-parallel-size", self.tp), ("--target-pipeline-parallel-size", self.pp),
                            ("--target-expert-parallel-size", self.ep),
                            ("--make-vocab-size-divisible-by", self.make_vocab_size_divisible_by)):
            if value < 1:
                raise ConversionError(f"{flag} must be >= 1, got {value}")
        if self.num_layer_list is not None and len(self.num_layer_list) != self.pp:
            raise ConversionError(f"--num-layer-list has {len(self.num_layer_list)} entries but "
                                  f"--target-pipeline-parallel-size is {self.pp}")
        if self.params_dtype is not None and self.params_dtype not in DTYPES:
            raise ConversionError(f"--params-dtype must be one of {', '.join(DTYPES)}, got {self.params_dtype!r}")
        if self.save_model_type == "hf" and self.keep_optimizer:
            raise ConversionError("--keep-optimizer: a Hugging Face checkpoint holds no optimizer state")

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
    seconds: float = 0.0

    def line(self) -> str:
        extra = f", {self.replicas_skipped} replica tensors checked and skipped" if self.replicas_skipped else ""
        return (f"{self.direction}: read {self.tensors_read} tensors ({self.bytes_read / 1e9:.3f} GB), wrote "
                f"{self.tensors_written} tensors ({self.bytes_written / 1e9:.3f} GB){extra}; "
                f"optimizer state: {self.optimizer}; {self.seconds:.1f} s")
