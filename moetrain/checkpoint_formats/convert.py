"""hf -> mg, mg -> hf and mg -> mg (re-shard), one tensor or one target rank at a time.

Every direction is "a getter of full HF-named tensors" (an HF directory, or a Megatron checkpoint
un-sharded on the fly) feeding a writer (the per-rank Megatron format
(iter_*/mp_rank_*/model_optim_rng.pt) via ``hf_to_mcore``, or streamed safetensors shards). Inputs
are validated as a whole from headers / metadata before any data is read; outputs are checked
complete; everything is written into a temporary sibling of ``--save-dir`` and renamed into place
at the end.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from moetrain.checkpoint_formats.directory import write_latest
from moetrain.checkpoint_formats.errors import ConversionError
from moetrain.checkpoint_formats.hf_dir import HFDirSource
from moetrain.checkpoint_formats.legacy import save_rank_checkpoint
from moetrain.checkpoint_formats.mcore_source import MegatronSource, hf_order, layer_of
from moetrain.checkpoint_formats.mg_dir import open_megatron
from moetrain.checkpoint_formats.options import DTYPE_NAMES, ConvertOptions, ConvertReport
from moetrain.checkpoint_formats.output_dir import check_target, commit, temp_dir_for
from moetrain.checkpoint_formats.progress import Progress
from moetrain.checkpoint_formats.safetensors_writer import (
    PlannedTensor,
    StreamingSafetensorsWriter,
    parse_size,
)
from moetrain.config import ConfigError
from moetrain.finetune.lora.adapter_checkpoint import check_adapter_fits, inspect_adapter
from moetrain.finetune.lora.hf_export import AdapterSource, merged_getter, write_peft_adapter
from moetrain.models.config import ModelConfig
from moetrain.models.hf_config import from_hf_config, to_hf_config
from moetrain.models.param_count import padded_vocab_size
from moetrain.models.registry import family_for_model_type, family_of, get_flavor
from moetrain.models.weight_maps import (
    ShardLayout,
    WeightMapError,
    all_coords,
    expected_hf_keys,
    expected_mcore_keys,
    hf_to_mcore,
    model_map,
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "generation_config.json")


def check_model_type(cfg: ModelConfig, model_type: str) -> None:
    owner, family = family_for_model_type(model_type), family_of(cfg)  # the registry decides, per family
    if family is not owner or not owner.converter_model_types[model_type](cfg):
        raise ConversionError(f"--model-type-hf {model_type} does not match the checkpoint's model, which is "
                              f"{family.describe(cfg)}")


def _hf_model_config(opts: ConvertOptions) -> ModelConfig:
    if opts.model:
        return get_flavor(opts.model)
    path = opts.load_dir / "config.json"
    if not path.is_file():
        raise ConversionError(f"{opts.load_dir}: no config.json; give the architecture with --model <flavor>")
    try:
        return from_hf_config(json.loads(path.read_text()), name=f"hf:{opts.load_dir.name}")
    except (KeyError, ValueError) as e:
        raise ConversionError(f"{path}: {e}") from None


def target_layout(cfg: ModelConfig, opts: ConvertOptions) -> ShardLayout:
    layout = opts.target_layout(padded_vocab_size(cfg.vocab_size, opts.tp, opts.make_vocab_size_divisible_by))
    try:
        expected_mcore_keys(cfg, layout, all_coords(layout)[0])  # validates the layout against the model
    except WeightMapError as e:
        raise ConversionError(f"target layout: {e}") from None
    return layout


def _tied_output(cfg: ModelConfig) -> tuple[str, str] | None:
    """(output, embedding) HF names when tie_word_embeddings ties them (the weight map's ``tied_names``),
    None when untied. The converter's one definition of a tied HF output weight: optional on disk and
    never written separately; when present it must have the embedding's shape (``_validate_hf``, from
    the headers) and equal it (``_check_tied``, which reads both)."""
    return None if cfg.untie_embeddings_and_output_weights else model_map(cfg).tied_names


def _validate_hf(cfg: ModelConfig, source: HFDirSource) -> None:
    expected = expected_hf_keys(cfg)
    tied = _tied_output(cfg)
    for name, info in source.infos.items():
        want = expected.get(tied[1] if tied and name == tied[0] else name)
        if want is None:
            raise ConversionError(f"tensor {name!r} in {info.file} maps to no megatron-core tensor")
        if info.shape != tuple(want):
            raise ConversionError(f"tensor {name!r} in {info.file}: shape {info.shape} contradicts the config "
                                  f"(expected {tuple(want)})")
    missing = sorted(set(expected) - set(source.infos))
    if missing:
        raise ConversionError(f"tensor {missing[0]!r} is missing from {source.dir} ({len(missing)} missing)")


def _check_tied(cfg: ModelConfig, source: HFDirSource) -> None:
    """A tied lm_head present on disk must equal the embedding (it is not written separately)."""
    tied = _tied_output(cfg)
    if tied is None or tied[0] not in source.infos:
        return
    out, emb = tied
    if not torch.equal(source.get(out), source.get(emb)):
        raise ConversionError(f"tensor {out!r} in {source.infos[out].file}: embeddings are "
                              f"tied (tie_word_embeddings) but it differs from {emb}")
    source.release()


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t if dtype is None or t.dtype == dtype else t.to(dtype)


def _write_mg(cfg, getter, release, layout: ShardLayout, opts: ConvertOptions, tmp: Path, report: ConvertReport,
              progress: Progress, extra_for=None) -> None:
    dtype_name = opts.params_dtype
    for coord in all_coords(layout):  # one target rank in memory at a time
        try:
            sd = hf_to_mcore(cfg, lambda n: _cast(getter(n), opts.dtype), layout, coord)
        except WeightMapError as e:
            raise ConversionError(str(e)) from None
        if dtype_name is None and sd:
            dtype_name = DTYPE_NAMES.get(next(iter(sd.values())).dtype)
        extra = extra_for(coord) if extra_for else None
        save_rank_checkpoint(tmp, coord, layout, sd, cfg.to_dict(), opts.iteration, dtype_name, extra)
        nbytes = sum(t.numel() * t.element_size() for t in sd.values())
        report.tensors_written += len(sd)
        report.bytes_written += nbytes
        progress.update(len(sd), nbytes)
        del sd
        release()
    write_latest(tmp, opts.iteration)  # last: a directory without it is not a checkpoint


def _write_hf(cfg: ModelConfig, source, get, opts: ConvertOptions, tmp: Path, report: ConvertReport,
              progress: Progress) -> None:
    names = hf_order(source.infos)
    plan = [PlannedTensor(n, source.infos[n].shape, opts.dtype or source.infos[n].dtype) for n in names]
    writer = StreamingSafetensorsWriter(tmp, plan, parse_size(opts.max_shard_size))
    last_layer = -1
    try:
        for name in names:
            layer = layer_of(name)
            if layer != last_layer:
                source.release()  # unmap the previous layer's files: memory stays ~ one tensor
                last_layer = layer
            t = _cast(get(name), opts.dtype)
            writer.add(name, t)
            progress.update(1, t.numel() * t.element_size())
        writer.finish()
    finally:
        writer.abort()
    report.tensors_written, report.bytes_written = writer.tensors_written, writer.bytes_written
    hf_cfg = to_hf_config(cfg)
    hf_cfg.dtype = opts.dtype or plan[0].dtype
    hf_cfg.save_pretrained(tmp)
    if opts.tokenizer_dir is not None:
        if not opts.tokenizer_dir.is_dir():
            raise ConversionError(f"--tokenizer-dir {opts.tokenizer_dir} is not a directory")
        for f in TOKENIZER_FILES:
            if (opts.tokenizer_dir / f).is_file():
                shutil.copy2(opts.tokenizer_dir / f, tmp / f)


def _open_adapter(opts: ConvertOptions, cfg: ModelConfig) -> AdapterSource | None:
    """The --lora-load adapter, checked against the base before anything is read."""
    if opts.lora_load is None:
        return None
    try:
        adapter = inspect_adapter(opts.lora_load)
        check_adapter_fits(adapter, cfg, f"--load-dir {opts.load_dir}")
    except ConfigError as e:
        raise ConversionError(str(e)) from None
    return AdapterSource(adapter)


def _export_peft(source: AdapterSource, opts: ConvertOptions, report: ConvertReport, start: float) -> ConvertReport:
    """--save-lora-to-hf: the adapter alone, as a PEFT adapter directory (the base was only checked)."""
    report.direction = "mg LoRA -> hf PEFT adapter"
    tmp = temp_dir_for(opts.save_dir)
    try:
        with Progress(2 * len(source.layout.pieces), opts.progress) as progress:
            report.tensors_written, report.bytes_written = write_peft_adapter(
                source, tmp, str(opts.load_dir), opts.dtype, progress)
        commit(tmp, opts.save_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.tensors_read = report.tensors_written
    report.bytes_read = sum(torch.Size(md.size).numel() * md.properties.dtype.itemsize for md in source.stored.values())
    report.optimizer = "not exported (a PEFT adapter holds none)"
    report.lora = f"{source.adapter.describe()}, {len(source.layout.pieces)} adapted modules"
    report.seconds = time.monotonic() - start
    return report


def convert(opts: ConvertOptions) -> ConvertReport:
    """Run one conversion; raises ConversionError on bad input (nothing is left at --save-dir then)."""
    start = time.monotonic()
    if not opts.load_dir.exists():
        raise ConversionError(f"--load-dir {opts.load_dir} does not exist")
    check_target(opts.save_dir, opts.overwrite, opts.load_dir)
    direction = f"{opts.load_model_type} -> {opts.save_model_type}"
    report = ConvertReport(direction)
    if opts.load_model_type == "hf":
        cfg = _hf_model_config(opts)
        check_model_type(cfg, opts.model_type_hf)
        source = HFDirSource(opts.load_dir)
        _validate_hf(cfg, source)
        layout = target_layout(cfg, opts)
        total = sum(len(expected_mcore_keys(cfg, layout, c)) for c in all_coords(layout))
        tmp = temp_dir_for(opts.save_dir)
        try:
            with Progress(total, opts.progress) as progress:
                _check_tied(cfg, source)
                _write_mg(cfg, source.get, source.release, layout, opts, tmp, report, progress)
            unread = sorted(set(source.infos) - source.read_names)
            if unread:
                raise ConversionError(f"tensor {unread[0]!r} in {source.infos[unread[0]].file} was never read")
            commit(tmp, opts.save_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        report.tensors_read, report.bytes_read = source.tensors_read, source.bytes_read
    else:
        mg = open_megatron(opts.load_dir, opts.model)
        check_model_type(mg.cfg, opts.model_type_hf)
        cfg = mg.cfg
        adapter = _open_adapter(opts, cfg)
        if opts.save_lora_to_hf:
            return _export_peft(adapter, opts, report, start)
        source = MegatronSource(cfg, mg.reader)
        get = source.get
        if adapter is not None:
            get, merged = merged_getter(source.get, adapter)
        report.optimizer = mg.optimizer_note(keep=False)
        tmp = temp_dir_for(opts.save_dir)
        try:
            if opts.save_model_type == "hf":
                with Progress(len(source.infos), opts.progress) as progress:
                    _write_hf(cfg, source, get, opts, tmp, report, progress)
            else:
                layout = target_layout(cfg, opts)
                extra_for = mg.optimizer_extra(layout) if opts.keep_optimizer else None
                report.optimizer = mg.optimizer_note(keep=bool(opts.keep_optimizer))
                total = sum(len(expected_mcore_keys(cfg, layout, c)) for c in all_coords(layout))
                with Progress(total, opts.progress) as progress:
                    _write_mg(cfg, get, source.release, layout, opts, tmp, report, progress, extra_for)
            source.check_all_read()
            if adapter is not None:
                report.lora = (f"merged {adapter.adapter.describe()} into {merged['merged']} weights"
                               + (f", {merged['replaced']} router weights replaced" if merged["replaced"] else ""))
            commit(tmp, opts.save_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        report.tensors_read, report.bytes_read = source.tensors_read, source.bytes_read
        report.replicas_skipped = source.replicas_skipped()
    report.seconds = time.monotonic() - start
    return report
