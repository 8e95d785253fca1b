"""``torchrun ... -m moetrain.inference.generate`` / ``moetrain-generate`` / ``tools/generate.py``.

    torchrun --nproc-per-node 2 -m moetrain.inference.generate --load ckpt/ \\
        --tensor-model-parallel-size 2 --task greedy --prompt "The capital of France is"

Flags: moetrain/inference/options.py; docs: docs/generate.md. Everything about the input is checked
before the process group starts (one message, exit code 2).
"""

from __future__ import annotations

import json
import sys
import warnings

from moetrain.config import ConfigError
from moetrain.inference.options import PreparedGeneration, parse_args, prepare
from moetrain.parallel import LayoutError

_USER_ERRORS = (ConfigError, LayoutError)


class _Console:
    """Rank 0 writes; streaming prints each reply's new text as its tokens arrive."""

    def __init__(self, prepared: PreparedGeneration, rank0: bool) -> None:
        self.prepared, self.rank0 = prepared, rank0

    def line(self, text: str) -> None:
        if self.rank0:
            print(text, flush=True)

    def text_of(self, output_ids: list[int]) -> str:
        return self.prepared.stop.cut_text(self.prepared.tokenizer.detokenize(output_ids))

    def streamer(self, stream: bool = True):
        """(on_tokens for a 1-prompt batch, finish(result) -> reply text)."""
        printed = [0]

        def on_tokens(step, results):
            if not (stream and self.rank0):
                return
            text = self.text_of(results[0].output_ids)
            if len(text) > printed[0]:
                sys.stdout.write(text[printed[0]:])
                sys.stdout.flush()
                printed[0] = len(text)

        def finish(result) -> str:
            text = self.text_of(result.output_ids)
            if self.rank0:
                sys.stdout.write((text[printed[0]:] if stream else text) + "\n")
                sys.stdout.flush()
            return text

        return on_tokens, finish


def _record(prompt, result, text: str) -> dict:
    return {"prompt": prompt.text, "output": text, "output_ids": result.output_ids,
            "prompt_tokens": len(result.prompt_ids), "output_tokens": len(result.output_ids),
            "finish_reason": result.finish_reason}


def run(prepared: PreparedGeneration, backend) -> list[dict]:
    """Generate for a prepared job (torch.distributed initialised); the records (every rank)."""
    import torch.distributed as dist

    from moetrain.checkpoint_formats.directory import write_atomic
    from moetrain.inference.chat import run_chat
    from moetrain.inference.generator import Generator
    from moetrain.inference.loading import load_model
    from moetrain.training.trainer import seed_everything

    cfg, info, dims = prepared.cfg, prepared.checkpoint, prepared.dims
    console = _Console(prepared, dist.get_rank() == 0)
    console.line(f"moetrain-generate: {info.model_cfg.name} ({info.kind} checkpoint {info.path}) on {backend.name} | "
                 f"{dims.describe()} | {cfg.dtype} | --task {cfg.task}")
    for note in prepared.notes:
        console.line(note)
    dims.initialize()
    seed_everything(cfg.seed)
    console.line("loading the weights ...")
    model, _ = load_model(info, dims, cfg.dtype, backend.batch_p2p_comm, adapter=prepared.adapter)
    generator = Generator(model, info.model_cfg.vocab_size, info.model_cfg.seq_length,
                          synchronize=backend.synchronize)
    if cfg.task == "chat":
        run_chat(prepared, generator, console.streamer)
        return []
    records = []
    batch = 1 if cfg.stream else cfg.micro_batch_size  # a stream is one prompt's text at a time
    for start in range(0, len(prepared.prompts), batch):
        chunk = prepared.prompts[start:start + batch]
        if cfg.stream:
            console.line(f"--- {chunk[0].where}: {chunk[0].text}")
        on_tokens, finish = console.streamer(cfg.stream)
        results = generator.generate([p.ids for p in chunk], cfg.max_new_tokens, cfg.sampling, stop=prepared.stop,
                                     seed=cfg.seed + start, on_tokens=on_tokens)
        for prompt, result in zip(chunk, results):
            text = console.text_of(result.output_ids)
            if cfg.stream:
                finish(result)  # the rest of the streamed line
            elif not cfg.output_file:
                console.line(f"--- {prompt.where}: {prompt.text}\n{text}")
            records.append(_record(prompt, result, text))
    if cfg.output_file and dist.get_rank() == 0:
        # A temporary name, then rename: a half-written file never looks complete.
        write_atomic(cfg.output_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        console.line(f"wrote {len(records)} results to {cfg.output_file}")
    t = generator.times
    if t.decode:
        console.line(f"time to first token {t.prefill / max(1, -(-len(records) // batch)):.3f} s | "
                     f"decode {len(t.decode) / sum(t.decode):.1f} steps/s")
    return records


def main(argv: list[str] | None = None, prog: str = "moetrain-generate") -> int:
    warnings.filterwarnings("ignore", category=UserWarning, module="megatron")
    from moetrain.device import get_backend, setup_device
    from moetrain.device.process_group import run_in_process_group

    try:
        cfg = parse_args(argv, prog)
        try:
            backend = get_backend(cfg.device)
        except (ValueError, RuntimeError) as e:
            raise ConfigError(str(e)) from None
        prepared = prepare(cfg, dist_backend=backend.dist_backend)
    except _USER_ERRORS as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    backend = setup_device(cfg.device)
    return run_in_process_group(backend, lambda: run(prepared, backend), _USER_ERRORS, prog)

if __name__ == "__main__":
    sys.exit(main())
