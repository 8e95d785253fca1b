"""Top level of a preprocessing run: partitions, merge, JSON sidecar, summary."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import traceback
from dataclasses import asdict

from moetrain.data.pipeline import PreprocessConfig, PreprocessError, RunStats, output_names, run_pipeline
from moetrain.data.readers import SIDECAR_SUFFIX, InputUnit, expand_inputs, split_units
from moetrain.data.tokenizers import build_tokenizer
from moetrain.data.writer import DatasetWriter

__all__ = ["preprocess", "merge_prefixes", "sidecar_path"]


def sidecar_path(prefix: str) -> str:
    return f"{prefix}{SIDECAR_SUFFIX}"


def merge_prefixes(prefixes: list[str], out_prefix: str) -> dict:
    """Concatenate finished datasets in order into one (megatron-core's add_index)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    for p in prefixes:
        if not IndexedDataset.exists(p):
            raise PreprocessError(f"{p}: no {p}.idx / {p}.bin dataset to merge")
    dtype = IndexedDataset(prefixes[0]).index.dtype
    writer = DatasetWriter(out_prefix, dtype)
    try:
        for p in prefixes:
            writer.add_index(p)
        return asdict(writer.finalize())
    except BaseException:
        writer.abort()
        raise


def _partition_main(cfg: PreprocessConfig, units: list[InputUnit], prefix: str, conn) -> None:
    try:
        conn.send(("ok", run_pipeline(cfg, units, prefix)))
    except (PreprocessError, ValueError) as e:
        conn.send(("err", str(e)))
    except BaseException:  # unexpected: keep the traceback for the parent to show
        conn.send(("err", traceback.format_exc()))
    finally:
        conn.close()


def _run_partitioned(cfg: PreprocessConfig, units: list[InputUnit]) -> RunStats:
    """Shards run as separate processes, each with workers/partitions workers, then merged in order."""
    shards = [s for s in split_units(units, cfg.partitions) if s]
    sub = PreprocessConfig(**{**asdict(cfg), "workers": max(1, cfg.workers // len(shards)), "progress": False,
                              "record_map": cfg.record_map,
                              "partitions": 1})
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    prefixes = [f"{cfg.output_prefix}_part{i}" for i in range(len(shards))]
    procs = []
    try:
        for shard, prefix in zip(shards, prefixes):
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_partition_main, args=(sub, shard, prefix, send))
            proc.start()
            send.close()
            procs.append((proc, recv))
        results = []
        for proc, recv in procs:
            try:
                results.append(recv.recv())
            except EOFError:
                results.append(("err", f"partition process {proc.pid} died"))
            proc.join()
        errors = [msg for status, msg in results if status == "err"]
        if errors:
            raise PreprocessError(errors[0])
        stats = RunStats()
        for _, part in results:
            stats.merge(part)
            stats.seconds = max(stats.seconds, part.seconds)
        for name in output_names(cfg):
            stats.outputs[name] = merge_prefixes([f"{p}_{name}" for p in prefixes], f"{cfg.output_prefix}_{name}")
        return stats
    finally:
        for proc, _ in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join()
        for prefix in prefixes:
            for name in output_names(cfg):
                for ext in (".bin", ".idx"):
                    if os.path.exists(f"{prefix}_{name}{ext}"):
                        os.remove(f"{prefix}_{name}{ext}")


def preprocess(cfg: PreprocessConfig, argv: list[str] | None = None) -> RunStats:
    units = expand_inputs(cfg.input)
    tok = build_tokenizer(cfg.tokenizer_type, cfg.tokenizer_name_or_path, cfg.tokenizer_model)
    if cfg.partitions > 1:
        stats = _run_partitioned(cfg, units)
    else:
        stats = run_pipeline(cfg, units, cfg.output_prefix)
    meta = {
        "command": argv if argv is not None else sys.argv,
        "config": asdict(cfg),
        "inputs": [u.path for u in units],
        "tokenizer": tok.describe(),
        "counts": {k: v for k, v in asdict(stats).items() if k not in ("outputs", "bad_examples")},
        "bad_examples": stats.bad_examples,
        "outputs": stats.outputs,
    }
    path = sidecar_path(cfg.output_prefix)
    with open(path + ".tmp", "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(path + ".tmp", path)
    return stats


def summary(stats: RunStats) -> str:
    mb = stats.input_bytes / 2**20
    dt = max(stats.seconds, 1e-9)
    tokens = sum(o["tokens"] for o in stats.outputs.values() if "labels" not in o["prefix"]
                 and "attention_mask" not in o["prefix"])
    lines = [f"processed {stats.records} records, {mb:.1f} MB in {stats.seconds:.1f} s "
             f"({stats.records / dt:.0f} docs/s, {mb / dt:.2f} MB/s, {tokens / dt:.0f} tokens/s)",
             f"skipped: {stats.empty} empty, {stats.bad} bad; {stats.truncated} truncated, {stats.dropped} dropped"]
    for o in stats.outputs.values():
        lines.append(f"  {o['prefix']}.bin/.idx: {o['documents']} documents, {o['tokens']} tokens ({o['dtype']})")
    return "\n".join(lines)
