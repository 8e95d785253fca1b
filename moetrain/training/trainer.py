"""A reusable training loop on megatron-core: build, step, evaluate, save, resume.

Pretraining, supervised fine-tuning and LoRA share everything here: process groups, seeding, the
DDP-wrapped model chunks, optimizer and scheduler, loading (converted weights or a checkpoint), the
NaN policy, logging, evaluation and checkpointing. What differs between them is the data and the
loss, so that is what a workflow supplies, as a :class:`DataProvider`::

    Trainer(run, backend, PretrainData()).train()      # moetrain.training.loop.pretrain

A workflow that must change the model itself (LoRA: freeze the base, add adapters) subclasses
:class:`Trainer` and overrides :meth:`Trainer.build_model` / :meth:`Trainer.checkpoint_meta`.

The trainer expects torch.distributed to be initialised and a run validated by
``moetrain.training.validate.resolve``.
"""

from __future__ import annotations

import abc
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from moetrain.training import step as step_mod
from moetrain.training.checkpointing import TrainState, load_checkpoint, save_checkpoint
from moetrain.training.converted_load import load_converted_weights
from moetrain.training.run_log import RunLogger, Throughput
from moetrain.training.step import StepResult
from moetrain.training.validate import ResolvedRun


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many NaN losses in a row); the message says why."""


@dataclass
class TrainSummary:
    losses: dict[int, float] = field(default_factory=dict)  # iteration -> lm loss (every rank)
    aux_losses: dict[int, float | None] = field(default_factory=dict)
    eval_losses: dict[int, float] = field(default_factory=dict)
    step_times: list[float] = field(default_factory=list)
    skipped_iters: int = 0
    nan_iters: int = 0
    state: TrainState = field(default_factory=TrainState)
    log_dir: str = ""


class DataProvider(abc.ABC):
    """What a workflow supplies to :class:`Trainer`: its datasets, their iterators and its loss.

    The forward step lives here, not on the trainer, because it is what reads the batches that
    :meth:`iterator` yields: the batch format and the loss that consumes it change together (SFT:
    ``labels`` with ignored prompt tokens instead of GPTDataset's ``loss_mask``).
    """

    @abc.abstractmethod
    def build(self, trainer: Trainer) -> tuple[Any, Any | None]:
        """(train dataset, validation dataset or None). Collective: runs on every rank, after the
        model is built and loaded, so ``trainer.state`` already holds the resume position. Print a
        ``trainer.logger.console`` line first if it is slow, so a stuck start-up step is named."""

    @abc.abstractmethod
    def iterator(self, trainer: Trainer, dataset: Any, start_sample: int) -> Any:
        """This data-parallel rank's micro-batch iterator (a list of one per model chunk when
        ``len(trainer.model) > 1``: the interleaved schedule pulls data per virtual stage), starting
        at global sample ``start_sample`` so that a resumed run sees the same global batches."""

    def forward_step(self, data_iterator, model):
        """megatron-core's ``forward_step_func``: ``(output, loss_func)``. ``loss_func(output)`` must
        return ``(loss sum, token count, {"lm loss": tensor([loss sum, token count])})``: the step
        reports sum / count over the global batch (Megatron-LM's token-weighted mean)."""
        # Looked up at call time so tests that patch step._loss_func still reach pretraining's loss.
        return step_mod.forward_step(data_iterator, model)

    def extra_metrics(self, trainer: Trainer, result: StepResult, seconds: float, steps: int) -> dict:
        """Values that replace or extend a metrics record over an interval of ``steps`` steps that
        took ``seconds`` (SFT: throughput over real tokens). Called on every rank (collectives are
        allowed); run_log writes METRIC_KEYS and SFT_METRIC_KEYS."""
        del trainer, result, seconds, steps
        return {}


def seed_everything(seed: int) -> None:
    """Python, NumPy, torch and megatron's model-parallel RNG tracker (process groups must exist)."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    # Megatron-LM: a different stream per pipeline stage; TP / EP replicas are seeded by the tracker.
    seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)


def build_model_and_optimizer(run: ResolvedRun, batch_p2p_comm: bool, prepare_chunk=None):
    """(model chunks wrapped in DDP, optimizer, scheduler, padded vocab size). ``prepare_chunk(chunk)``
    runs on each chunk after its dtype cast and before DDP (LoRA adds adapters and freezes the base
    there: DDP and the optimizer then hold the trainable parameters only)."""
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.transformer.module import Float16Module

    from moetrain.models.builder import build_model_chunks
    from moetrain.models.param_count import padded_vocab_size
    from moetrain.training.lr_schedule import build_scheduler
    from moetrain.training.transformer_config import DTYPES, RuntimeOptions, build_transformer_config

    t, opt = run.cfg.training, run.cfg.optimizer
    options = RuntimeOptions(dtype=t.dtype, hidden_dropout=t.hidden_dropout, attention_dropout=t.attention_dropout,
                             recompute_granularity=t.recompute_granularity, recompute_method=t.recompute_method,
                             recompute_num_layers=t.recompute_num_layers,
                             moe_token_dispatcher_type=t.moe_token_dispatcher_type, init_method_std=t.init_method_std,
                             batch_p2p_comm=batch_p2p_comm,
                             calculate_per_token_loss=run.cfg.sft.is_instruction_dataset,
                             variable_seq_lengths=run.cfg.sft.variable_seq_lengths and run.dims.pp > 1)
    tf_config = build_transformer_config(run.model_cfg, run.dims, options)
    padded = padded_vocab_size(run.model_cfg.vocab_size, run.dims.tp, run.cfg.training.make_vocab_size_divisible_by)
    chunks = build_model_chunks(run.model_cfg, tf_config, padded)
    if t.dtype != "fp32":
        # Casts the loss back to fp32 on the last stage and p2p inputs to the model dtype.
        chunks = [Float16Module(tf_config, c) for c in chunks]
    if prepare_chunk is not None:
        for chunk in chunks:
            prepare_chunk(chunk)
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=t.dtype != "fp32", overlap_grad_reduce=False,
                                               use_distributed_optimizer=opt.use_distributed_optimizer)
    model = [DistributedDataParallel(config=tf_config, ddp_config=ddp_config, module=c, disable_bucketing=i > 0)
             for i, c in enumerate(chunks)]
    optimizer = get_megatron_optimizer(OptimizerConfig(
        optimizer=opt.optimizer, lr=opt.lr, min_lr=opt.min_lr, weight_decay=opt.weight_decay,
        adam_beta1=opt.adam_beta1, adam_beta2=opt.adam_beta2, adam_eps=opt.adam_eps, clip_grad=opt.clip_grad,
        bf16=t.bf16, fp16=t.fp16, params_dtype=DTYPES[t.dtype],
        use_distributed_optimizer=opt.use_distributed_optimizer, loss_scale=opt.loss_scale,
        initial_loss_scale=opt.initial_loss_scale, min_loss_scale=opt.min_loss_scale,
        loss_scale_window=opt.loss_scale_window, hysteresis=opt.hysteresis), model)
    scheduler = build_scheduler(opt, optimizer, t.train_iters, t.global_batch_size)
    # The schedules call these hooks: loss scaling (fp16), grad all-reduce after the last backward.
    tf_config.grad_scale_func = optimizer.scale_loss
    tf_config.finalize_model_grads_func = finalize_model_grads
    tf_config.no_sync_func = [m.no_sync for m in model] if len(model) > 1 else model[0].no_sync
    return model, optimizer, scheduler, padded


def _layout(run: ResolvedRun) -> dict:
    d = run.dims
    return {"world_size": d.world_size, "tp": d.tp, "pp": d.pp, "ep": d.ep, "dp": d.dp, "vpp": d.vpp,
            "num_layer_list": d.num_layer_list, "sequence_parallel": d.sequence_parallel}


def parameter_counts(model: list) -> dict[str, int]:
    """Parameters of the whole model (a LoRA model's adapters included, as PEFT counts them) and how
    many of them train (all; a LoRA run's adapters and a trainable router), counted from the live
    chunks of every rank (one all-reduce): dense parameters once per TP shard (a replicated one on
    TP rank 0 only, the last stage's tied-embedding copy not at all) over the DP replicas, expert
    parameters over their expert-DP replicas."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
    from megatron.core.transformer.module import param_is_not_shared

    counts = [0, 0, 0, 0]  # dense total, dense trainable, expert total, expert trainable
    for chunk in model:
        for p in chunk.parameters():
            if getattr(p, "allreduce", True):
                if not (param_is_not_shared(p) and param_is_not_tensor_parallel_duplicate(p)):
                    continue
                slot = 0
            else:
                slot = 2
            counts[slot] += p.numel()
            counts[slot + 1] += p.numel() if p.requires_grad else 0
    # on the parameters' device: the collective library of an accelerator wants its own tensors
    totals = torch.tensor(counts, dtype=torch.float64, device=next(model[0].parameters()).device)
    dist.all_reduce(totals)
    dp, edp = parallel_state.get_data_parallel_world_size(), parallel_state.get_expert_data_parallel_world_size()
    dense, dense_trained, expert, expert_trained = (int(round(float(x))) for x in totals)
    return {"parameters": dense // dp + expert // edp, "trainable_parameters": dense_trained // dp + expert_trained // edp}


def _run_info(run: ResolvedRun, backend) -> dict:
    d, t = run.dims, run.cfg.training
    return {"model": run.cfg.model, "model_config": run.model_cfg.to_dict(), "device": backend.name,
            "device_name": backend.device_name(), "world_size": d.world_size, "tp": d.tp, "pp": d.pp, "ep": d.ep,
            "dp": d.dp, "global_batch_size": t.global_batch_size, "micro_batch_size": t.micro_batch_size,
            "seq_length": run.seq_length, "dtype": t.dtype}


@dataclass
class _Interval:
    """Counts since the last metrics line (a line averages the step time over its interval)."""

    skipped: int = 0
    nan: int = 0
    time: float = 0.0
    steps: int = 0

    def add(self, result: StepResult, seconds: float) -> None:
        self.skipped += result.skipped
        self.nan += result.nan
        self.time += seconds
        self.steps += 1


class Trainer:
    """Builds everything on construction (in the order below, each slow step announced first), then
    :meth:`train` runs the loop. Attributes a workflow may read: ``run``, ``backend``, ``logger``,
    ``model`` (list of DDP chunks), ``optimizer``, ``scheduler``, ``padded_vocab_size``, ``state``
    (iteration and consumed samples), ``dp_rank``, ``train_ds``, ``valid_ds``, ``train_iterator``."""

    def __init__(self, run: ResolvedRun, backend, data: DataProvider) -> None:
        from megatron.core import parallel_state

        self.run, self.backend, self.data = run, backend, data
        t = run.cfg.training
        # The banner and one line per slow start-up step come first, so a slow (or stuck) step is named.
        self.logger = RunLogger(run.log_dir, writer=dist.get_rank() == 0, train_iters=t.train_iters,
                                tensorboard=run.cfg.logging.tensorboard)
        self.logger.console(
            f"moetrain: {run.model_cfg.name} on {backend.name} | {run.dims.describe()} | "
            f"GBS {t.global_batch_size} MBS {t.micro_batch_size} x {run.num_microbatches} micro-batches | "
            f"seq {run.seq_length} | {t.dtype}")
        run.dims.initialize()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        seed_everything(t.seed)
        self.logger.console("building the model and optimizer ...")
        self.model, self.optimizer, self.scheduler, self.padded_vocab_size = self.build_model()
        self.layout = _layout(run)
        self.state = self.resume()
        self.train_ds, self.valid_ds = data.build(self)
        self.train_iterator = data.iterator(self, self.train_ds, self.state.consumed_train_samples)

    # ------------------------------------------------------------------ build parts (overridable)
    def build_model(self):
        """(DDP model chunks, optimizer, scheduler, padded vocab size). LoRA overrides this."""
        return build_model_and_optimizer(self.run, self.backend.batch_p2p_comm)

    def resume(self) -> TrainState:
        """Load converted weights or a checkpoint as the run asks; the position to train from."""
        return self.load_weights()

    def load_weights(self, part: str = "all", weights_only: bool = False) -> TrainState:
        """--load into the model: converted weights, or ``part`` of a trainer checkpoint (with the
        optimizer, scheduler and RNG state unless ``weights_only`` or --finetune / --no-load-*)."""
        run, ck = self.run, self.run.cfg.checkpoint
        if run.load_converted:
            self.logger.console(f"loading converted weights from {ck.load} ...")
            load_converted_weights(ck.load, self.model, self.optimizer, run.dims, self.padded_vocab_size)
        elif run.load_iteration is not None:
            self.logger.console(f"loading checkpoint {ck.load} (iteration {run.load_iteration}) ...")
            return self.load_from(ck.load, part, weights_only, step=ck.ckpt_step)
        return TrainState()

    def load_from(self, root, part: str, weights_only: bool = False, step: int | None = None) -> TrainState:
        """``part`` of the newest intact checkpoint under ``root`` (or ``step``'s), as the run's
        checkpoint flags say (fallback, --no-load-optim / --no-load-rng, --finetune)."""
        ck = self.run.cfg.checkpoint
        return load_checkpoint(root, self.model, self.optimizer, self.scheduler,
                               load_optim=not (weights_only or ck.no_load_optim),
                               load_rng=not (weights_only or ck.no_load_rng), finetune=weights_only or ck.finetune,
                               layout=self.layout, part=part, step=step, fallback=not ck.no_checkpoint_fallback,
                               say=self.logger.console)

    def checkpoint_meta(self) -> dict:
        """Written beside every checkpoint (read back to check compatibility on load)."""
        run = self.run
        return {"model_config": run.model_cfg.to_dict(), "layout": self.layout, "args": run.cfg.to_dict(),
                "has_optimizer": not run.cfg.checkpoint.no_save_optim}

    # ------------------------------------------------------------------ loop parts
    def step(self) -> tuple[StepResult, float]:
        """One optimizer step on the next global batch: (result, seconds). Advances ``state`` and
        the scheduler (not on a skipped update); NaN bookkeeping is :meth:`train`'s."""
        t, run = self.run.cfg.training, self.run
        self.backend.synchronize()
        start = time.perf_counter()
        result = step_mod.train_step(self.model, self.optimizer, self.train_iterator, run.num_microbatches,
                                     run.seq_length, t.micro_batch_size, run.model_cfg.num_layers,
                                     forward_step_func=self.data.forward_step)
        self.backend.synchronize()
        seconds = time.perf_counter() - start
        self.state.iteration += 1
        self.state.consumed_train_samples += t.global_batch_size
        if not result.skipped:
            self.scheduler.step(increment=t.global_batch_size)
        return result, seconds

    def evaluate(self, iteration: int) -> float:
        """Validation loss after ``iteration`` (logged): the eval_iters global batches that this
        evaluation owns, so each evaluation (and a resumed run's) reads the same samples."""
        run, t, data_cfg = self.run, self.run.cfg.training, self.run.cfg.data
        start_sample = (iteration // data_cfg.eval_interval - 1) * data_cfg.eval_iters * t.global_batch_size
        it = self.data.iterator(self, self.valid_ds, start_sample)
        losses = [step_mod.eval_step(self.model, it, run.num_microbatches, run.seq_length, t.micro_batch_size,
                                     run.model_cfg.num_layers, forward_step_func=self.data.forward_step)
                  for _ in range(data_cfg.eval_iters)]
        loss = float(np.mean(losses))
        self.logger.eval(iteration, "validation", loss)
        return loss

    # What save() writes (checkpointing's ``part``): the whole model; a LoRA run saves its adapters.
    checkpoint_part = "all"

    def save(self) -> Path | None:
        """A checkpoint of the current state under --save (logged); its path. A save that fails (a
        full disk) leaves the previous checkpoint as it was and stops the run, or with
        --save-failure continue warns and returns None."""
        from moetrain.training.checkpointing import SaveError

        ck, state = self.run.cfg.checkpoint, self.state
        start = time.perf_counter()
        try:
            path = save_checkpoint(ck.save, TrainState(state.iteration, state.consumed_train_samples), self.model,
                                   self.optimizer, self.scheduler, self.checkpoint_meta(),
                                   save_optim=not ck.no_save_optim, keep_last_k=ck.keep_last_k,
                                   part=self.checkpoint_part)
        except SaveError as e:
            if ck.save_failure == "continue":
                self.logger.console(f"WARNING: {e}; training goes on (--save-failure continue)")
                return None
            raise TrainingError(f"{e}; stopping (--save-failure continue would go on training)") from None
        what = "checkpoint" if self.checkpoint_part == "all" else f"checkpoint ({self.checkpoint_part} only)"
        self.logger.console(f"saved {what} {path} in {time.perf_counter() - start:.1f} s")
        return path

    def log_metrics(self, result: StepResult, interval: _Interval, throughput: Throughput) -> None:
        step_s = interval.time / interval.steps
        self.logger.metrics({
            "iteration": self.state.iteration, "lm_loss": result.lm_loss, "aux_loss": result.aux_loss,
            "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": result.grad_norm,
            "skipped_iters": interval.skipped, "nan_iters": interval.nan, "step_time_s": step_s,
            **throughput.metrics(step_s), "mem_peak_gb": self.backend.memory_stats().to_gb()["peak_allocated"],
            **self.data.extra_metrics(self, result, interval.time, interval.steps)})

    def _throughput(self) -> Throughput:
        from moetrain.training.flops import flops_per_iteration

        run, t = self.run, self.run.cfg.training
        flops = flops_per_iteration(run.model_cfg, t.global_batch_size, run.seq_length,
                                    padded_vocab_size=self.padded_vocab_size)
        return Throughput(t.global_batch_size, run.seq_length, run.dims.world_size, flops,
                          self.backend.peak_flops(t.dtype))

    def _eval_due(self, iteration: int) -> bool:
        d = self.run.cfg.data
        return self.valid_ds is not None and d.eval_iters > 0 and iteration % d.eval_interval == 0

    def train(self) -> TrainSummary:
        """Train to --train-iters from ``state``: log, stop on a NaN streak, evaluate and save on
        their intervals, save at the end (unless that iteration was just saved)."""
        t, ck, state = self.run.cfg.training, self.run.cfg.checkpoint, self.state
        log_interval = self.run.cfg.logging.log_interval
        self.logger.run_info({**_run_info(self.run, self.backend), **parameter_counts(self.model)})
        self.logger.training_starts(state.iteration)
        throughput = self._throughput()
        summary = TrainSummary(log_dir=str(self.run.log_dir))
        interval = _Interval()
        nan_streak, last_saved = 0, None
        while state.iteration < t.train_iters:
            result, seconds = self.step()
            summary.losses[state.iteration] = result.lm_loss
            summary.aux_losses[state.iteration] = result.aux_loss
            summary.step_times.append(seconds)
            summary.skipped_iters += result.skipped
            summary.nan_iters += result.nan
            interval.add(result, seconds)
            nan_streak = nan_streak + 1 if result.nan else 0
            first_of_run = len(summary.step_times) == 1  # the start-up loss is always worth a line
            if (state.iteration % log_interval == 0 or state.iteration == t.train_iters or nan_streak
                    or first_of_run):
                self.log_metrics(result, interval, throughput)
                interval = _Interval()
            if nan_streak >= t.max_nan_iters:
                raise TrainingError(f"{nan_streak} NaN/inf losses in a row (--max-nan-iters {t.max_nan_iters}) at "
                                    f"iteration {state.iteration}; stopping. Lower --lr, check the data, or use "
                                    "--bf16 instead of --fp16")
            if self._eval_due(state.iteration):
                summary.eval_losses[state.iteration] = self.evaluate(state.iteration)
            if ck.save and ck.save_interval and state.iteration % ck.save_interval == 0:
                self.save()
                last_saved = state.iteration
        if ck.save and last_saved != state.iteration:
            self.save()
        self.logger.close()
        summary.state = state
        return summary
