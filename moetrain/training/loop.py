"""Pretraining: the generic :class:`~moetrain.training.trainer.Trainer` fed megatron's GPTDataset.

``pretrain(run, backend)`` expects torch.distributed to be initialised (torchrun via
``moetrain.pretrain.main``, or the test harness) and a run already validated by
``moetrain.training.validate.resolve``. Other workflows (SFT, LoRA) compose the same Trainer with
their own :class:`~moetrain.training.trainer.DataProvider` instead of copying this loop.
"""

from __future__ import annotations

from moetrain.training.trainer import (
    DataProvider,
    Trainer,
    TrainingError,
    TrainSummary,
    build_model_and_optimizer,
    seed_everything,
)
from moetrain.training.validate import ResolvedRun

# TrainingError / TrainSummary / build_model_and_optimizer / seed_everything are re-exported: this
# module was their home before the Trainer existed, and callers still catch loop.TrainingError.
__all__ = ["PretrainData", "TrainSummary", "TrainingError", "build_model_and_optimizer", "pretrain",
           "seed_everything"]


class PretrainData(DataProvider):
    """Megatron GPTDataset splits of --data-path (MockGPTDataset for --mock-data), read by consumed
    samples (training/pretrain_data.py); the loss is step.forward_step's (token-weighted cross entropy
    over ``loss_mask``)."""

    def build(self, trainer: Trainer):
        from moetrain.training import pretrain_data as data_mod

        cfg, t = trainer.run.cfg, trainer.run.cfg.training
        sizes = data_mod.dataset_sizes(t.train_iters, t.global_batch_size, cfg.data.eval_interval,
                                       cfg.data.eval_iters)
        if cfg.data.mock_data:
            trainer.logger.console("building mock dataset indices (megatron-core MockGPTDataset, split 1,1,1) ...")
        else:
            trainer.logger.console(f"building dataset indices for {' '.join(cfg.data.blend()[0])} "
                                   f"(split {cfg.data.split}) ...")
        train_ds, valid_ds, _ = data_mod.build_datasets(cfg.data, trainer.run.tokenizer, trainer.run.seq_length,
                                                        t.seed, sizes, vocab_size=trainer.run.model_cfg.vocab_size)
        return train_ds, valid_ds

    def iterator(self, trainer: Trainer, dataset, start_sample: int):
        from moetrain.training import pretrain_data as data_mod

        return data_mod.iterators(dataset, start_sample, trainer.run.cfg.training.micro_batch_size,
                                  trainer.dp_rank, trainer.run.dims.dp, len(trainer.model))


def pretrain(run: ResolvedRun, backend) -> TrainSummary:
    return Trainer(run, backend, PretrainData()).train()
