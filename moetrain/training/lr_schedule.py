"""Learning-rate schedule: megatron-core's OptimizerParamScheduler, counted in samples.

Like Megatron-LM, warmup and decay lengths are given in iterations and converted to samples
(x global batch size); the scheduler advances by one global batch per successful step, so a
skipped (NaN) step does not move the schedule.
"""

from __future__ import annotations

from moetrain.config import ConfigError, OptimizerSection


def schedule_iters(opt: OptimizerSection, train_iters: int) -> tuple[int, int]:
    """(warmup iterations, decay iterations) with --lr-warmup-fraction resolved."""
    decay = opt.lr_decay_iters or max(train_iters, 1)
    warmup = opt.lr_warmup_iters
    if opt.lr_warmup_fraction is not None:
        warmup = int(opt.lr_warmup_fraction * decay)
    if train_iters == 0:  # an initial-weights save: no step is taken, any schedule will do
        return 0, decay
    if warmup >= decay:
        raise ConfigError(f"lr warmup ({warmup} iterations) must be shorter than the decay "
                          f"({decay} iterations: --lr-decay-iters or --train-iters)")
    return warmup, decay


def build_scheduler(opt: OptimizerSection, optimizer, train_iters: int, global_batch_size: int):
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    warmup, decay = schedule_iters(opt, train_iters)
    return OptimizerParamScheduler(
        optimizer, init_lr=opt.lr_warmup_init, max_lr=opt.lr, min_lr=opt.min_lr,
        lr_warmup_steps=warmup * global_batch_size, lr_decay_steps=decay * global_batch_size,
        lr_decay_style=opt.lr_decay_style, start_wd=opt.weight_decay, end_wd=opt.weight_decay,
        wd_incr_steps=max(train_iters, 1) * global_batch_size, wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True, override_opt_param_scheduler=False,
    )
