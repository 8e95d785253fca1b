"""A LoRA adapter checkpoint (a LoRA run's ``--save``) as something to inspect, check and read.

    <dir>/latest_checkpointed_iteration.txt
    <dir>/iter_0000100/     dist-checkpoint of the adapters (+ their optimizer state) only
        moetrain.json       the base's ModelConfig and ``"lora": {lora_r, lora_alpha, ...}``

The stored keys are megatron-core's global ones (all layers stacked on dim 0, experts on dim 1):

    decoder.layers.self_attention.linear_qkv_lora.lora_A.q    [L, r, h]      (and .k, .v)
    decoder.layers.self_attention.linear_qkv_lora.lora_B.q    [L, q, r]
    decoder.layers.self_attention.linear_proj_lora.lora_A     [L, r, q]
    decoder.layers.mlp.linear_fc1_lora.lora_A.gate            [L, r, h]      (dense MLP; and .up)
    decoder.layers.mlp.experts_lora.lora_A.gate               [L, E, r, h]   (every expert; .up, .down)
    decoder.layers.mlp.router.weight                          [L, E, h]      (``router`` target only)

so an adapter is the same at any TP / PP / EP layout. :func:`inspect_adapter` and
:func:`check_adapter_fits` need no process group: the launchers and the converter call them before
anything starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moetrain.config import ConfigError
from moetrain.models.config import ModelConfig


@dataclass(frozen=True)
class AdapterCheckpoint:
    path: Path  # the iter_* directory
    model_cfg: ModelConfig  # the base model the adapters were trained on
    r: int
    alpha: float
    targets: tuple[str, ...]  # --lora-target-modules, as trained
    iteration: int

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def describe(self) -> str:
        return f"LoRA r {self.r} alpha {self.alpha:g} on {' '.join(self.targets)} (iteration {self.iteration})"


def adapter_meta(r: int, alpha: float, dropout: float, targets) -> dict:
    """The ``"lora"`` entry of an adapter checkpoint's moetrain.json (what :func:`inspect_adapter` reads)."""
    return {"adapters_only": True, "lora_r": r, "lora_alpha": alpha, "lora_dropout": dropout,
            "lora_target_modules": list(targets)}


def inspect_adapter(path: str | Path, flag: str = "--lora-load") -> AdapterCheckpoint:
    """What an adapter checkpoint holds; ConfigError naming ``flag`` and the path when it is none."""
    from moetrain.checkpoint_formats.directory import (
        META_FILE,
        TRACKER_FILE,
        iter_dir_name,
        read_latest,
        read_meta,
    )

    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{flag} {path}: no such directory")
    if (path / META_FILE).is_file():  # an iter_* directory itself
        ckpt, iteration = path, int(path.name.rpartition("_")[2]) if path.name.startswith("iter_") else 0
    else:
        iteration = read_latest(path)
        if iteration is None:
            raise ConfigError(f"{flag} {path}: no {TRACKER_FILE}; expected a LoRA run's --save directory")
        ckpt = path / iter_dir_name(iteration)
    meta = read_meta(ckpt)
    if meta is None:
        raise ConfigError(f"{flag} {ckpt}: no {META_FILE}; expected a LoRA run's --save directory")
    lora = meta.get("lora")
    if not lora or not lora.get("adapters_only"):
        raise ConfigError(f"{flag} {ckpt}: not a LoRA adapter checkpoint (a full checkpoint goes to --load)")
    return AdapterCheckpoint(ckpt, ModelConfig.from_dict(meta["model_config"]), int(lora["lora_r"]),
                             float(lora["lora_alpha"]), tuple(lora["lora_target_modules"]), int(iteration))


def check_adapter_fits(adapter: AdapterCheckpoint, base: ModelConfig, base_where: str, *,
                       r: int | None = None, targets=None, flag: str = "--lora-load") -> None:
    """The adapter belongs to ``base`` (every architecture field that differs is named) and, when
    given, was trained with rank ``r`` and the target set ``targets``."""
    from moetrain.training.checkpointing import check_compatible

    try:
        check_compatible(adapter.model_cfg.to_dict(), base, str(adapter.path))
    except ConfigError as e:
        raise ConfigError(f"{flag} {adapter.path} was trained on another base model than {base_where}: {e}") from None
    if r is not None and r != adapter.r:
        raise ConfigError(f"{flag} {adapter.path} has rank {adapter.r}, the run asks for --lora-r {r}; "
                          f"pass --lora-r {adapter.r}")
    if targets is not None and set(targets) != set(adapter.targets):
        raise ConfigError(f"{flag} {adapter.path} adapts {' '.join(adapter.targets)}, the run asks for "
                          f"--lora-target-modules {' '.join(targets)}; pass --lora-target-modules "
                          f"{' '.join(adapter.targets)}")
