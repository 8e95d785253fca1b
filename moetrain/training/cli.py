"""``moetrain-pretrain`` command line: Megatron-LM / ModelLink flag names -> ``PretrainConfig``.

Flags are generated from the dataclass sections of ``moetrain.config`` (one flag per field, same
spelling), so a field added there is a flag at once. Every ``ModelConfig`` field is also a flag
(``--num-layers 8``, ``--num-experts 4``) that overrides the chosen ``--model`` flavor, as is the
generic ``--model-override key=value``. ``--config file.yaml|.toml`` carries the same settings
(flat keys, or grouped under section names); the command line wins.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

import yaml

from moetrain.config import SECTIONS, ConfigError, PretrainConfig
from moetrain.models.config import ModelConfig

MODEL_PREFIX = "model__"
# ModelConfig fields that are not architecture flags (or are owned by another section).
_MODEL_SKIP = {"name", "family", "hf_architecture", "published_params", "seq_length"}
_HELP = {
    "data_path": "prefix(es) of preprocessed .bin/.idx; blend: '0.3 pathA 0.7 pathB'",
    "split": "train,valid,test proportions, e.g. 969,30,1",
    "mock_data": "synthetic tokens from megatron-core's MockGPTDataset instead of --data-path (benchmarks, "
                 "smoke runs); the tokenizer is optional (default: the model's vocabulary)",
    "num_layer_list": "layers per pipeline stage, e.g. '3,5' (ModelLink)",
    "keep_last_k": "keep only the newest K checkpoints",
    "finetune": "load weights only: iteration, optimizer, scheduler and data start from zero",
    "max_nan_iters": "stop after this many NaN/inf losses in a row (each skips its step)",
    "log_dir": "metrics.jsonl, run_info.json, tensorboard/ (default $MOETRAIN_LOG_DIR or <save>/logs)",
}


def _base_type(hint) -> type:
    """``int | None`` -> int, ``list[str]`` -> list."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is list:
        return list
    if args and origin is not None:
        return _base_type(args[0])
    return hint


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_field(group, name: str, hint, default, dest: str | None = None, optional_bool: bool = False) -> None:
    kind = _base_type(hint)
    kwargs = dict(dest=dest or name, help=_HELP.get(name))
    if kind is bool:
        # A flag that defaults to True needs its --no- form (e.g. --no-tensorboard).
        action = argparse.BooleanOptionalAction if optional_bool or default is True else "store_true"
        group.add_argument(_flag(name), action=action, default=default, **kwargs)
    elif kind is list:
        group.add_argument(_flag(name), nargs="+", default=default, **kwargs)
    else:
        group.add_argument(_flag(name), type=kind, default=default, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moetrain-pretrain", description="Pretrain a MoE / dense LLM on megatron-core.")
    p.add_argument("--config", help="YAML or TOML file with the same settings (command line wins)")
    p.add_argument("--model", default=None, help="model flavor, e.g. grok1-40b, llama2-7b, grok1-tiny (default: the "
                   f"model the architecture flags describe, else {PretrainConfig.model})")
    p.add_argument("--dry-run", action="store_true", help="resolve the flags for this world size, print the model, "
                   "its layout per rank and the planner's memory estimate, and exit without starting ranks")
    p.add_argument("--device", default=None, choices=("npu", "cuda", "cpu"), help="default: auto (npu > cuda > cpu)")
    p.add_argument("--model-override", action="append", default=[], metavar="KEY=VALUE",
                   help="override any ModelConfig field, e.g. --model-override num_layers=8")
    for section, cls in SECTIONS.items():
        group = p.add_argument_group(section)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            _add_field(group, f.name, hints[f.name], default)
    group = p.add_argument_group("model overrides (any ModelConfig field; default: the flavor's value)")
    hints = typing.get_type_hints(ModelConfig)
    for f in dataclasses.fields(ModelConfig):
        if f.name not in _MODEL_SKIP:
            _add_field(group, f.name, hints[f.name], argparse.SUPPRESS, dest=MODEL_PREFIX + f.name, optional_bool=True)
    return p


def _coerce_override(key: str, text: str):
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    if key not in known:
        raise ConfigError(f"--model-override {key}=...: unknown model field; known: {', '.join(sorted(known))}")
    return yaml.safe_load(text)


def load_config_file(path: str) -> dict:
    """Flat ``dest -> value`` defaults from a YAML / TOML file (sections are flattened)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path}: no such file")
    if file.suffix == ".toml":
        import tomllib

        raw = tomllib.loads(file.read_text())
    else:
        raw = yaml.safe_load(file.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"--config {path}: expected a mapping of settings")
    flat: dict = {}
    for key, value in raw.items():
        key = key.replace("-", "_")
        if key in SECTIONS and isinstance(value, dict):
            flat.update({k.replace("-", "_"): v for k, v in value.items()})
        else:
            flat[key] = value
    known = {"model", "device", "model_override", "model_overrides", "dry_run"}
    for cls in SECTIONS.values():
        known |= {f.name for f in dataclasses.fields(cls)}
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)} - _MODEL_SKIP
    defaults: dict = {}
    for key, value in flat.items():
        if key == "model_overrides":
            for k, v in (value or {}).items():
                _coerce_override(k, "null")
                defaults[MODEL_PREFIX + k] = v
        elif key in model_fields:
            defaults[MODEL_PREFIX + key] = value
        elif key in known:
            if key == "data_path" and isinstance(value, str):
                value = value.split()
            defaults[key] = value
        else:
            raise ConfigError(f"--config {path}: unknown setting {key!r}")
    return defaults


def parse_args(argv: list[str] | None = None) -> PretrainConfig:
    from moetrain.compat.architecture import describes_model
    from moetrain.compat.megatron_flags import translate

    parser = build_parser()
    # Megatron-LM / ModelLink spellings -> moetrain's (refused flags raise here, with the reason).
    translation = translate(list(sys.argv[1:] if argv is None else argv), set(parser._option_string_actions))
    argv = translation.argv
    config_pre = argparse.ArgumentParser(add_help=False)
    config_pre.add_argument("--config")
    pre, _ = config_pre.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**load_config_file(pre.config))
    ns = vars(parser.parse_args(argv))
    overrides = {k[len(MODEL_PREFIX):]: v for k, v in ns.items() if k.startswith(MODEL_PREFIX)}
    for item in ns.get("model_override") or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--model-override {item!r}: expected KEY=VALUE")
        overrides[key.strip().replace("-", "_")] = _coerce_override(key.strip().replace("-", "_"), value)
    sections = {}
    for section, cls in SECTIONS.items():
        sections[section] = cls(**{f.name: ns[f.name] for f in dataclasses.fields(cls)})
    model = ns["model"]
    if model is None:
        model = None if describes_model(overrides) else PretrainConfig.model
    return PretrainConfig(model=model, model_overrides=overrides, device=ns["device"], dry_run=ns["dry_run"],
                          compat_notes=translation.startup_lines(),
                          max_position_embeddings=translation.max_position_embeddings, **sections)
