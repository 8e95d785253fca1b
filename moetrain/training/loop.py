"""The pretraining loop: build model / optimizer / data on megatron-core, train, evaluate, save.

``pretrain(run, backend)`` expects torch.distributed to be initialised (torchrun via
``moetrain.pretrain.main``, or the test harness) and a run already validated by
``moetrain.training.validate.resolve``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from moetrain.training.checkpointing import TrainState, load_checkpoint, save_checkpoint
from moetrain.training.converted_load import load_converted_weights
from moetrain.training.run_log import RunLogger, Throughput
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


def _seed(seed: int) -> None:
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    # Megatron-LM: a different stream per pipeline stage; TP / EP replicas are seeded by the tracker.
    seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)


def build_model_and_optimizer(run: ResolvedRun, batch_p2p_comm: bool):
    """(model chunks wrapped in DDP, optimizer, scheduler, padded vocab size)."""
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
                             batch_p2p_comm=batch_p2p_comm)
    tf_config = build_transformer_config(run.model_cfg, run.dims, options)
    padded = padded_vocab_size(run.model_cfg.vocab_size, run.dims.tp)
    chunks = build_model_chunks(run.model_cfg, tf_config, padded)
    if t.dtype != "fp32":
        # Casts the loss back to fp32 on the last stage and p2p inputs to the model dtype.
        chunks = [Float16Module(tf_config, c) for c in chunks]
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


def _run_info(run: ResolvedRun, backend) -> dict:
    d, t = run.dims, run.cfg.training
    return {"model": run.cfg.model, "model_config": run.model_cfg.to_dict(), "device": backend.name,
            "device_name": backend.device_name(), "world_size": d.world_size, "tp": d.tp, "pp": d.pp, "ep": d.ep,
            "dp": d.dp, "global_batch_size": t.global_batch_size, "micro_batch_size": t.micro_batch_size,
            "seq_length": run.seq_length, "dtype": t.dtype}


def pretrain(run: ResolvedRun, backend) -> TrainSummary:
    from megatron.core import parallel_state

    from moetrain.training import data as data_mod
    from moetrain.training.flops import flops_per_iteration
    from moetrain.training.step import eval_step, train_step

    cfg, t, ck = run.cfg, run.cfg.training, run.cfg.checkpoint
    # The banner and one line per slow start-up step come first, so a slow (or stuck) step is named.
    logger = RunLogger(run.log_dir, writer=dist.get_rank() == 0, train_iters=t.train_iters,
                       tensorboard=cfg.logging.tensorboard)
    logger.console(f"moetrain: {run.model_cfg.name} on {backend.name} | {run.dims.describe()} | "
                   f"GBS {t.global_batch_size} MBS {t.micro_batch_size} x {run.num_microbatches} micro-batches | "
                   f"seq {run.seq_length} | {t.dtype}")
    run.dims.initialize()
    _seed(t.seed)
    logger.console("building the model and optimizer ...")
    model, optimizer, scheduler, padded = build_model_and_optimizer(run, backend.batch_p2p_comm)
    layout = _layout(run)
    state = TrainState()
    if run.load_converted:
        logger.console(f"loading converted weights from {ck.load} ...")
        load_converted_weights(ck.load, model, optimizer, run.dims, padded)
    elif run.load_iteration is not None:
        logger.console(f"loading checkpoint {ck.load} (iteration {run.load_iteration}) ...")
        state = load_checkpoint(ck.load, model, optimizer, scheduler, load_optim=not ck.no_load_optim,
                                load_rng=not ck.no_load_rng, finetune=ck.finetune, layout=layout)
    sizes = data_mod.dataset_sizes(t.train_iters, t.global_batch_size, cfg.data.eval_interval, cfg.data.eval_iters)
    logger.console(f"building dataset indices for {' '.join(cfg.data.blend()[0])} (split {cfg.data.split}) ...")
    train_ds, valid_ds, _ = data_mod.build_datasets(cfg.data, run.tokenizer, run.seq_length, t.seed, sizes)
    dp_rank, dp = parallel_state.get_data_parallel_rank(), run.dims.dp
    train_it = data_mod.iterators(train_ds, state.consumed_train_samples, t.micro_batch_size, dp_rank, dp, len(model))

    logger.run_info(_run_info(run, backend))
    logger.training_starts(state.iteration)
    throughput = Throughput(t.global_batch_size, run.seq_length, run.dims.world_size,
                            flops_per_iteration(run.model_cfg, t.global_batch_size, run.seq_length,
                                                padded_vocab_size=padded), backend.peak_flops(t.dtype))
    meta = {"model_config": run.model_cfg.to_dict(), "layout": layout, "args": cfg.to_dict(),
            "has_optimizer": not ck.no_save_optim}
    summary = TrainSummary(log_dir=str(run.log_dir))
    interval = {"skipped": 0, "nan": 0, "time": 0.0, "steps": 0}
    nan_streak, last_saved = 0, None
    step_args = (run.num_microbatches, run.seq_length, t.micro_batch_size, run.model_cfg.num_layers)
    while state.iteration < t.train_iters:
        backend.synchronize()
        start = time.perf_counter()
        result = train_step(model, optimizer, train_it, *step_args)
        backend.synchronize()
        seconds = time.perf_counter() - start
        state.iteration += 1
        state.consumed_train_samples += t.global_batch_size
        if not result.skipped:
            scheduler.step(increment=t.global_batch_size)
        summary.losses[state.iteration] = result.lm_loss
        summary.aux_losses[state.iteration] = result.aux_loss
        summary.step_times.append(seconds)
        summary.skipped_iters += result.skipped
        summary.nan_iters += result.nan
        interval["skipped"] += result.skipped
        interval["nan"] += result.nan
        interval["time"] += seconds
        interval["steps"] += 1
        nan_streak = nan_streak + 1 if result.nan else 0
        first_of_run = len(summary.step_times) == 1  # the start-up loss is always worth a line
        if (state.iteration % cfg.logging.log_interval == 0 or state.iteration == t.train_iters or nan_streak
                or first_of_run):
            step_s = interval["time"] / interval["steps"]
            logger.metrics({"iteration": state.iteration, "lm_loss": result.lm_loss, "aux_loss": result.aux_loss,
                            "lr": optimizer.param_groups[0]["lr"], "grad_norm": result.grad_norm,
                            "skipped_iters": interval["skipped"], "nan_iters": interval["nan"], "step_time_s": step_s,
                            **throughput.metrics(step_s), "mem_peak_gb": backend.memory_stats().to_gb()["peak_allocated"]})
            interval = {"skipped": 0, "nan": 0, "time": 0.0, "steps": 0}
        if nan_streak >= t.max_nan_iters:
            raise TrainingError(f"{nan_streak} NaN/inf losses in a row (--max-nan-iters {t.max_nan_iters}) at "
                                f"iteration {state.iteration}; stopping. Lower --lr, check the data, or use --bf16 "
                                "instead of --fp16")
        if valid_ds is not None and cfg.data.eval_iters > 0 and state.iteration % cfg.data.eval_interval == 0:
            start_sample = (state.iteration // cfg.data.eval_interval - 1) * cfg.data.eval_iters * t.global_batch_size
            summary.eval_losses[state.iteration] = _evaluate(eval_step, model, valid_ds, start_sample, run, dp_rank)
            logger.eval(state.iteration, "validation", summary.eval_losses[state.iteration])
        if ck.save and ck.save_interval and state.iteration % ck.save_interval == 0:
            _save(ck, state, model, optimizer, scheduler, meta, logger)
            last_saved = state.iteration
    if ck.save and last_saved != state.iteration:
        _save(ck, state, model, optimizer, scheduler, meta, logger)
    logger.close()
    summary.state = state
    return summary


def _evaluate(eval_step, model, dataset, start_sample: int, run: ResolvedRun, dp_rank: int) -> float:
    from moetrain.training import data as data_mod

    t = run.cfg.training
    it = data_mod.iterators(dataset, start_sample, t.micro_batch_size, dp_rank, run.dims.dp, len(model))
    losses = [eval_step(model, it, run.num_microbatches, run.seq_length, t.micro_batch_size,
                        run.model_cfg.num_layers) for _ in range(run.cfg.data.eval_iters)]
    return float(np.mean(losses))


def _save(ck, state: TrainState, model, optimizer, scheduler, meta: dict, logger: RunLogger) -> None:
    start = time.perf_counter()
    path = save_checkpoint(ck.save, TrainState(state.iteration, state.consumed_train_samples), model, optimizer,
                           scheduler, meta, save_optim=not ck.no_save_optim, keep_last_k=ck.keep_last_k)
    logger.console(f"saved checkpoint {path} in {time.perf_counter() - start:.1f} s")
