"""``torchrun ... -m moetrain.finetune.sft`` / ``moetrain-sft``: supervised fine-tuning.

The pretraining flags plus MindSpeed-LLM's SFT ones: ``--finetune`` (weights only from ``--load``,
iteration 0), ``--is-instruction-dataset`` (implied here), ``--prompt-type`` (checked against the
data's), ``--variable-seq-lengths``, ``--reset-attention-mask`` / ``--reset-position-ids`` (packed
data), ``--no-shuffle``. ``moetrain.pretrain --is-instruction-dataset`` runs the same, as ModelLink's
``pretrain_gpt.py`` does. The loop is the Trainer's; this module supplies the data and the loss.
"""

from __future__ import annotations

import math
import sys

import torch.distributed as dist

from moetrain.training.trainer import DataProvider, Trainer


class SftData(DataProvider):
    """Instruction datasets in epochs, padded micro-batches, token-sum loss, token counters."""

    def __init__(self, reset_position_ids: bool = False) -> None:
        self.reset_position_ids = reset_position_ids
        self.tokens = {"real": 0, "trained": 0, "padded": 0, "rows": 0}

    def build(self, trainer: Trainer):
        from moetrain.training.sft_data import build_splits, instruction_prefix

        cfg = trainer.run.cfg
        prefix = instruction_prefix(cfg.data.data_path[0])
        trainer.logger.console(f"reading instruction dataset {prefix} (split {cfg.data.split}) ...")
        return build_splits(prefix, cfg.data.split)

    def _collate(self, trainer: Trainer):
        from moetrain.training.sft_data import PAD_MULTIPLE, Collate

        run, s = trainer.run, trainer.run.cfg.sft
        pad_id = getattr(run.tokenizer, "pad", None)
        pad_id = pad_id if isinstance(pad_id, int) and pad_id >= 0 else 0
        # Sequence parallelism splits the sequence over TP: lengths must divide by it too.
        multiple = math.lcm(PAD_MULTIPLE, run.dims.tp)
        return Collate(seq_length=run.seq_length, pad_id=pad_id, variable_seq_lengths=s.variable_seq_lengths,
                       pad_multiple=multiple, reset_attention_mask=s.reset_attention_mask,
                       reset_position_ids=s.reset_position_ids)

    def iterator(self, trainer: Trainer, dataset, start_sample: int):
        from moetrain.training.pretrain_data import MicroBatches
        from moetrain.training.sft_data import EpochOrder

        run = trainer.run
        order = EpochOrder(len(dataset), run.cfg.training.seed, shuffle=not run.cfg.sft.no_shuffle)
        its = [_Counting(MicroBatches(dataset, start_sample, run.cfg.training.micro_batch_size, trainer.dp_rank,
                                      run.dims.dp, row=order.row, collate=self._collate(trainer)),
                         self.tokens if i == 0 and dataset is trainer.train_ds else None)
               for i in range(len(trainer.model))]
        return its if len(its) > 1 else its[0]

    def forward_step(self, data_iterator, model):
        from moetrain.training.sft_step import sft_forward_step

        return sft_forward_step(data_iterator, model, reset_position_ids=self.reset_position_ids)

    def extra_metrics(self, trainer: Trainer, result, seconds: float, steps: int) -> dict:
        """Throughput of the interval over what was computed and learned, summed over DP ranks:
        tokens/s/p over real (non-pad) tokens, trained (target) tokens/s, the padding fraction, and
        TFLOPS / MFU over the FLOPs of the padded micro-batches actually run."""
        import torch
        from megatron.core import parallel_state

        from moetrain.training import throughput
        from moetrain.training.flops import flops_per_iteration

        keys = ("real", "trained", "padded", "rows")
        counts = torch.tensor([self.tokens[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(counts, group=parallel_state.get_data_parallel_group())
        self.tokens.update(dict.fromkeys(keys, 0))
        real, trained, padded, rows = (float(x) for x in counts)
        devices, seconds = trainer.run.dims.world_size, max(seconds, 1e-12)
        length = padded / max(rows, 1.0)  # mean padded row length of the interval
        flops = flops_per_iteration(trainer.run.model_cfg, 1, max(int(round(length)), 1),
                                    padded_vocab_size=trainer.padded_vocab_size) * rows
        peak = trainer.backend.peak_flops(trainer.run.cfg.training.dtype)
        return {"tokens_per_sec_per_device": real / (seconds * devices),
                "tflops_per_device": throughput.tflops_per_device(flops, seconds, devices),
                "mfu": throughput.mfu(flops, seconds, devices, peak),
                "trained_tokens_per_sec": trained / seconds,
                "padding_fraction": 1.0 - real / max(padded, 1.0)}


class _Counting:
    """Counts the real, trained and padded tokens of the micro-batches a rank trains on."""

    def __init__(self, inner, counter: dict | None) -> None:
        self.inner, self.counter = inner, counter

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.inner)
        if self.counter is not None:
            self.counter["real"] += int(batch["real_tokens"])
            self.counter["trained"] += int(batch["loss_mask"].sum())
            self.counter["padded"] += batch["tokens"].numel()
            self.counter["rows"] += batch["tokens"].shape[0]
        return batch


def sft(run, backend):
    """Fine-tune a validated run (torch.distributed initialised)."""
    trainer_class = Trainer
    if run.cfg.lora.enabled:
        from moetrain.finetune.lora.trainer import LoraTrainer as trainer_class
    return trainer_class(run, backend, SftData(reset_position_ids=run.cfg.sft.reset_position_ids)).train()


def main(argv: list[str] | None = None) -> int:
    from moetrain.pretrain import main as pretrain_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--is-instruction-dataset" not in argv:
        argv.append("--is-instruction-dataset")
    return pretrain_main(argv, prog="moetrain-sft")


if __name__ == "__main__":
    sys.exit(main())
