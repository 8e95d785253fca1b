"""Benchmark tools/preprocess_data.py against the tokenizer's own ceiling.

Builds jsonl corpora of two sizes in a temporary directory by repeating ../shared/data (never
copied into the repo), then for each size:
- runs the tool as a subprocess with the Grok-1 SentencePiece tokenizer and N workers, polling
  /proc for the resident memory of its whole process tree (main + workers) and taking the
  throughput from the run's sidecar (pipeline time, excluding Python start-up) and the wall time;
- runs the ceiling: N forked processes, each encoding its share of the same documents (already
  in memory) with the same tokenizer in a bare loop; throughput = bytes / slowest process's time.
Writes docs/bench/preprocess.json and prints a Markdown table.

    python tools/bench_preprocess.py [--sizes-mb 50 100] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared"
GROK = SHARED / "tokenizers" / "grok1" / "tokenizer.model"


def shared_documents() -> list[str]:
    data = SHARED / "data"
    docs = [json.loads(line)["text"] for line in open(data / "c4_demo.jsonl", encoding="utf-8")]
    docs += [ln for ln in open(data / "wiki_demo.txt", encoding="utf-8").read().split("\n") if ln.strip()]
    shakespeare = open(data / "tinyshakespeare.txt", encoding="utf-8").read().split("\n\n")
    docs += ["\n\n".join(shakespeare[i:i + 20]) for i in range(0, len(shakespeare), 20)]
    return docs


def build_corpus(path: Path, docs: list[str], size_mb: int) -> int:
    lines = [json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs]
    target, written = size_mb * 2**20, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            for line in lines:
                f.write(line)
                written += len(line.encode("utf-8"))
                if written >= target:
                    break
    return written


def _tree_memory(root: int) -> tuple[int, int]:
    """(PSS summed over ``root`` and its descendants, largest single RSS), in bytes.

    PSS, not RSS, is summed: forked workers share the parent's pages (torch, megatron-core), and
    summing RSS would count those once per process.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    pss, max_rss, stack = 0, 0, [root]
    while stack:
        pid = stack.pop()
        stack += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        max_rss = max(max_rss, int(line.split()[1]) * 1024)
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return pss, max_rss


def run_tool(corpus: Path, out_prefix: Path, workers: int) -> dict:
    cmd = [sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(corpus),
           "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", str(GROK),
           "--output-prefix", str(out_prefix), "--append-eod", "--workers", str(workers), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, peak_proc = 0, 0
    stop = threading.Event()

    def poll() -> None:
        nonlocal peak, peak_proc
        while not stop.is_set():
            pss, rss = _tree_memory(proc.pid)
            peak, peak_proc = max(peak, pss), max(peak_proc, rss)
            stop.wait(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    poller.join()
    if proc.returncode != 0:
        raise SystemExit(f"preprocess_data.py failed:\n{err}")
    meta = json.loads(Path(f"{out_prefix}_preprocess.json").read_text())
    counts, out = meta["counts"], meta["outputs"]["text_document"]
    return {"seconds": counts["seconds"], "cpu_seconds": counts["cpu_seconds"], "wall_seconds": wall, "bytes": counts["input_bytes"],
            "tokens": out["tokens"], "documents": out["documents"], "peak_pss_mb": peak / 2**20,
            "peak_process_rss_mb": peak_proc / 2**20}


def _ceiling_worker(corpus: str, rank: int, workers: int, barrier, queue) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(GROK))
    with open(corpus, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for i, line in enumerate(f) if i % workers == rank]
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    barrier.wait()
    t0, cpu0 = time.perf_counter(), time.process_time()
    tokens = 0
    for text in texts:
        tokens += len(sp.encode_as_ids(text)) + 1  # +1: the EOD the tool appends
    queue.put((time.perf_counter() - t0, nbytes, tokens, time.process_time() - cpu0))


def run_ceiling(corpus: Path, workers: int) -> dict:
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_ceiling_worker, args=(str(corpus), r, workers, barrier, queue))
             for r in range(workers)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    seconds = max(r[0] for r in results)
    return {"seconds": seconds, "bytes": sum(r[1] for r in results), "tokens": sum(r[2] for r in results),
            "cpu_seconds": sum(r[3] for r in results)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[50, 100])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each; the fastest counts (shared, noisy CPUs)")
    ap.add_argument("--output", default=str(REPO / "docs" / "bench" / "preprocess.json"))
    args = ap.parse_args(argv)
    if not GROK.is_file() or not (SHARED / "data").is_dir():
        print(f"bench_preprocess: skipped, {SHARED} (shared data and Grok-1 tokenizer) is absent", file=sys.stderr)
        return 0
    docs = shared_documents()
    rows = []
    with tempfile.TemporaryDirectory(prefix="moetrain_bench_pre_") as tmp:
        for size in args.sizes_mb:
            corpus = Path(tmp) / f"corpus_{size}mb.jsonl"
            nbytes = build_corpus(corpus, docs, size)
            tools, ceilings = [], []
            for _ in range(args.repeats):  # interleaved, so both see the same background load
                tools.append(run_tool(corpus, Path(tmp) / f"out_{size}", args.workers))
                ceilings.append(run_ceiling(corpus, args.workers))
            tool = min(tools, key=lambda r: r["seconds"])
            ceiling = min(ceilings, key=lambda r: r["seconds"])
            peak_pss = max(r["peak_pss_mb"] for r in tools)
            peak_proc = max(r["peak_process_rss_mb"] for r in tools)
            for f in Path(tmp).glob(f"out_{size}_*"):
                f.unlink()
            corpus.unlink()
            mbps = tool["bytes"] / 2**20 / tool["seconds"]
            cmbps = ceiling["bytes"] / 2**20 / ceiling["seconds"]
            rows.append({
                "size_mb": round(nbytes / 2**20, 1), "workers": args.workers,
                "tool_mb_s": round(mbps, 2), "tool_tokens_s": round(tool["tokens"] / tool["seconds"]),
                "tool_wall_mb_s": round(tool["bytes"] / 2**20 / tool["wall_seconds"], 2),
                "ceiling_mb_s": round(cmbps, 2), "ceiling_tokens_s": round(ceiling["tokens"] / ceiling["seconds"]),
                "pct_of_ceiling": round(100 * mbps / cmbps, 1),
                # CPU view: ceiling CPU-seconds / tool CPU-seconds (main + workers) for the same bytes.
                "cpu_efficiency_pct": round(100 * min(c["cpu_seconds"] for c in ceilings)
                                            / min(t["cpu_seconds"] for t in tools), 1),
                "peak_pss_mb": round(peak_pss, 1), "peak_process_rss_mb": round(peak_proc, 1),
                "all_tool_seconds": [round(r["seconds"], 2) for r in tools],
                "all_ceiling_seconds": [round(r["seconds"], 2) for r in ceilings],
                "tokens": tool["tokens"], "documents": tool["documents"],
                "tool_seconds": round(tool["seconds"], 2), "tool_wall_seconds": round(tool["wall_seconds"], 2),
            })
            print(f"{size} MB done: {rows[-1]}", file=sys.stderr)
    result = {"tokenizer": "grok1 SentencePiece (131072 pieces)", "cpu_count": os.cpu_count(),
              "python": sys.version.split()[0], "rows": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(rows))
    return 0


def markdown(rows: list[dict]) -> str:
    out = ["| corpus | workers | tool MB/s | tool tokens/s | ceiling MB/s | ceiling tokens/s | % of ceiling "
           "| CPU efficiency | tool MB/s incl. start-up | peak memory (PSS, main + workers) | largest process RSS |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['size_mb']} MB | {r['workers']} | {r['tool_mb_s']} | {r['tool_tokens_s']:,} | "
                   f"{r['ceiling_mb_s']} | {r['ceiling_tokens_s']:,} | {r['pct_of_ceiling']}% | {r['cpu_efficiency_pct']}% | "
                   f"{r['tool_wall_mb_s']} | {r['peak_pss_mb']} MB | {r['peak_process_rss_mb']} MB |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
