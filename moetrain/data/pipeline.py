"""The preprocessing pipeline: streaming reader -> worker pool -> in-order writers.

Memory stays bounded: the main process keeps at most ``window`` batches in flight
(``apply_async`` results in a deque, consumed in submission order). ``Pool.imap`` would be
simpler but its feeder thread drains the whole input iterator into the task queue as fast as
it can read, so resident memory would grow with the input when tokenizing is the slower side.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
from megatron.core.datasets.indexed_dataset import DType

from moetrain.data.handlers import PRETRAIN_HANDLER, PretrainHandler, RecordError, make_handler, parse_record
from moetrain.data.packing import LengthPolicy, Packer
from moetrain.data.readers import InputUnit, RawRecord, read_unit
from moetrain.data.tokenizers import build_tokenizer
from moetrain.data.writer import DatasetWriter

__all__ = ["PreprocessConfig", "RunStats", "PreprocessError", "run_pipeline", "output_names", "sft_output_name"]

SFT_OUTPUTS = ("input_ids", "labels", "attention_mask")


class PreprocessError(RuntimeError):
    """A failure reported to the user as one message (exit code 2 from the CLI)."""


@dataclass
class PreprocessConfig:
    input: str
    output_prefix: str
    tokenizer_type: str = "PretrainedFromHF"
    tokenizer_name_or_path: str | None = None
    tokenizer_model: str | None = None
    handler_name: str = PRETRAIN_HANDLER
    json_keys: list[str] = field(default_factory=lambda: ["text"])
    append_eod: bool = False
    prompt_type: str = "plain"
    seq_length: int | None = None
    pack: bool = False
    overlong: str = "truncate"
    workers: int = 1
    partitions: int = 1
    chunk_size: int = 128  # records per worker task: amortizes pickling and pipe round trips
    skip_bad_records: bool = False
    progress: bool = True
    # LLaMA-Factory's dataset_info.json columns / tags (moetrain.data.llamafactory.RecordMap), or None.
    record_map: object | None = None

    @property
    def is_pretrain(self) -> bool:
        return self.handler_name == PRETRAIN_HANDLER

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise PreprocessError("--workers must be >= 1")
        if self.partitions < 1:
            raise PreprocessError("--partitions must be >= 1")
        if self.pack and not self.seq_length:
            raise PreprocessError("--pack needs --seq-length")
        if self.overlong not in ("truncate", "drop"):
            raise PreprocessError("--overlong must be truncate or drop")


@dataclass
class RunStats:
    records: int = 0
    input_bytes: int = 0
    empty: int = 0  # empty documents / samples with nothing to learn, skipped
    bad: int = 0  # malformed records skipped by --skip-bad-records
    truncated: int = 0
    dropped: int = 0  # over-long samples dropped (--overlong drop, or nothing left after truncation)
    samples: int = 0  # SFT samples written (before packing)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # main process + workers, during the pipeline (robust to a busy machine)
    bad_examples: list[str] = field(default_factory=list)
    outputs: dict[str, dict] = field(default_factory=dict)

    def merge(self, other: RunStats) -> None:
        for name in ("records", "input_bytes", "empty", "bad", "truncated", "dropped", "samples"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.bad_examples = (self.bad_examples + other.bad_examples)[:10]


def sft_output_name(name: str) -> str:
    """The file name (after ``{output_prefix}_``) of one SFT output; training reads the same names."""
    return f"packed_{name}_document"


def output_names(cfg: PreprocessConfig) -> list[str]:
    if cfg.is_pretrain:
        return [f"{key}_document" for key in cfg.json_keys]
    return [sft_output_name(name) for name in SFT_OUTPUTS]


# ----------------------------------------------------------------------------- worker side
_WORKER: dict = {}


def _init_worker(cfg: PreprocessConfig, dtype) -> None:
    tok = build_tokenizer(cfg.tokenizer_type, cfg.tokenizer_name_or_path, cfg.tokenizer_model)
    _WORKER["handler"] = make_handler(cfg.handler_name, tok, cfg.json_keys, cfg.append_eod, cfg.prompt_type, dtype)
    _WORKER["key"] = cfg.json_keys[0]
    _WORKER["record_map"] = cfg.record_map


@dataclass
class PretrainBatch:
    """A batch's pretraining documents, concatenated per key: one array crosses the pipe, not one per doc."""

    records: int
    nbytes: int
    empty: int
    bad: list[str]
    docs: dict[str, tuple[np.ndarray, list[list[int]]]]  # key -> (all ids, sentence lengths per doc)


def _encode_batch(batch: list[RawRecord]):
    handler, key = _WORKER["handler"], _WORKER["key"]
    out = []
    for rec in batch:
        try:
            data = parse_record(rec.payload, rec.fmt, key)
            if _WORKER.get("record_map") is not None:
                data = _WORKER["record_map"].apply(data)
            out.append(("ok", handler.encode(data), rec.nbytes))
        except RecordError as e:
            out.append(("bad", f"{rec.source}:{rec.line}: {e}", rec.nbytes))
    if not isinstance(handler, PretrainHandler):
        return out
    ids: dict[str, list[np.ndarray]] = {k: [] for k in handler.keys}
    lens: dict[str, list[list[int]]] = {k: [] for k in handler.keys}
    empty, bad = 0, []
    for status, res, _ in out:
        if status == "bad":
            bad.append(res)
            continue
        empty += len(res.empty_keys)
        for k, (doc_ids, doc_lens) in res.docs.items():
            ids[k].append(doc_ids)
            lens[k].append(doc_lens)
    docs = {k: (np.concatenate(ids[k]) if ids[k] else np.zeros(0, handler.dtype), lens[k]) for k in handler.keys}
    return PretrainBatch(len(out), sum(r[2] for r in out), empty, bad, docs)


# ----------------------------------------------------------------------------- main side
def _batches(units: list[InputUnit], size: int) -> Iterator[list[RawRecord]]:
    batch: list[RawRecord] = []
    for unit in units:
        for rec in read_unit(unit):
            batch.append(rec)
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch


def _ordered_results(cfg: PreprocessConfig, dtype, batches: Iterable[list[RawRecord]]) -> Iterator[list[tuple]]:
    if cfg.workers == 1:  # in-process: no start-up cost, same results
        _init_worker(cfg, dtype)
        for batch in batches:
            yield _encode_batch(batch)
        return
    # fork: workers inherit imported modules (a spawned worker would re-import torch and megatron).
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    window = cfg.workers * 4
    # Forked workers share the parent's pages (torch, megatron-core: ~400 MB); the cyclic GC
    # writes to every tracked object it visits, which would copy those pages into each worker
    # over time. Freezing moves them out of the GC's reach, so workers stay small and flat.
    gc.freeze()
    with ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(cfg, dtype)) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.apply_async(_encode_batch, (batch,)))
            if len(pending) >= window:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class _Progress:
    def __init__(self, total_bytes: int, enabled: bool) -> None:
        from tqdm import tqdm

        # Counted in bytes, shown in MB (the bar's rate is the MB/s).
        self.bar = tqdm(total=total_bytes, unit="MB", unit_scale=1 / 2**20, bar_format=None,
                        desc="preprocess", disable=not enabled, file=sys.stderr, smoothing=0.1)
        self.start = time.perf_counter()
        self.last = 0.0

    def update(self, nbytes: int, docs: int, tokens: int) -> None:
        self.bar.update(nbytes)
        now = time.perf_counter()
        if now - self.last > 0.5:
            dt = max(now - self.start, 1e-9)
            self.bar.set_postfix_str(f"{docs / dt:.0f} docs/s, {tokens / dt / 1e3:.1f}k tok/s", refresh=False)
            self.last = now

    def close(self) -> None:
        self.bar.close()


def run_pipeline(cfg: PreprocessConfig, units: list[InputUnit], prefix: str) -> RunStats:
    """Process ``units`` into ``{prefix}_{name}.bin/.idx``; returns counts (and output stats)."""
    tok = build_tokenizer(cfg.tokenizer_type, cfg.tokenizer_name_or_path, cfg.tokenizer_model)
    dtype = DType.optimal_dtype(tok.vocab_size)  # Megatron-LM's choice, for byte identity
    make_handler(cfg.handler_name, tok, cfg.json_keys, cfg.append_eod, cfg.prompt_type, dtype)  # validate early
    names = output_names(cfg)
    dtypes = {name: (np.int32 if "labels" in name else dtype) for name in names}  # labels hold -100
    stats = RunStats()
    writers: dict[str, DatasetWriter] = {}
    total = sum((u.end if u.end is not None else os.path.getsize(u.path)) - u.start for u in units)
    progress = _Progress(total, cfg.progress)
    policy = LengthPolicy(cfg.seq_length, cfg.overlong)
    packer = Packer(cfg.seq_length) if cfg.pack else None
    tokens = 0
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    try:
        writers = {name: DatasetWriter(f"{prefix}_{name}", dtypes[name]) for name in names}

        def write_row(ids, labels, mask) -> None:
            for name, arr in zip(SFT_OUTPUTS, (ids, labels, mask)):
                arr = arr.astype(dtypes[f"packed_{name}_document"], copy=False)
                writers[f"packed_{name}_document"].add_document(arr, [arr.size])

        def bad_record(message: str) -> None:
            if not cfg.skip_bad_records:
                raise PreprocessError(f"{message} (use --skip-bad-records to skip such records)")
            stats.bad += 1
            if len(stats.bad_examples) < 10:
                stats.bad_examples.append(message)

        for results in _ordered_results(cfg, dtype, _batches(units, cfg.chunk_size)):
            if isinstance(results, PretrainBatch):
                for message in results.bad:
                    bad_record(message)
                stats.records += results.records
                stats.empty += results.empty
                for key, (ids, lens) in results.docs.items():
                    writer, pos = writers[f"{key}_document"], 0
                    for doc_lens in lens:
                        n = sum(doc_lens)
                        writer.add_document(ids[pos:pos + n], doc_lens)
                        pos += n
                    tokens += ids.size
                stats.input_bytes += results.nbytes
                progress.update(results.nbytes, stats.records, tokens)
                continue
            nbytes = 0
            for status, out, size in results:
                nbytes += size
                stats.records += 1
                if status == "bad":
                    bad_record(out)
                elif out.input_ids is None:
                    stats.empty += 1
                else:
                    kept = policy.apply(out.input_ids, out.labels)
                    if kept is None:
                        continue
                    stats.samples += 1
                    tokens += kept[0].size
                    if packer is None:
                        write_row(kept[0], kept[1], np.ones(kept[0].size, dtype=np.int64))
                    else:
                        for row in packer.add(*kept):
                            write_row(row.input_ids, row.labels, row.attention_mask)
            stats.input_bytes += nbytes
            progress.update(nbytes, stats.records, tokens)
        if packer is not None:
            for row in packer.finish():
                write_row(row.input_ids, row.labels, row.attention_mask)
        stats.truncated, stats.dropped = policy.truncated, policy.dropped
        for name, writer in writers.items():
            stats.outputs[name] = asdict(writer.finalize())
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        progress.close()
    stats.seconds = time.perf_counter() - t0
    stats.cpu_seconds = _cpu_seconds() - cpu0
    return stats


def _cpu_seconds() -> float:
    """CPU time of this process plus its reaped children (the pool's workers once it is closed)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
