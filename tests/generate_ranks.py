"""Rank-side code for the generation tests (loaded by moetrain.testing.spawn in each rank)."""

from __future__ import annotations

import torch

SAMPLING = dict(greedy=False, temperature=0.8, top_k=20, top_p=0.9)


def _generator(flavor_dir: str, tp: int, pp: int, ep: int):
    from moetrain.device import get_backend
    from moetrain.inference.generator import Generator
    from moetrain.inference.loading import inspect_checkpoint, load_model
    from moetrain.parallel import ParallelDims
    from moetrain.training.trainer import seed_everything

    info = inspect_checkpoint(flavor_dir)
    cfg = info.model_cfg
    ep = ep if cfg.is_moe else 1  # a dense model holds no experts to spread
    dims = ParallelDims(world_size=torch.distributed.get_world_size(), tp=tp, pp=pp, ep=ep)
    dims.validate_model(cfg, training=False)
    dims.initialize()
    seed_everything(1)
    model, _ = load_model(info, dims, "fp32", get_backend().batch_p2p_comm)
    return Generator(model, cfg.vocab_size, cfg.seq_length), cfg


def _save_trainer_checkpoint(gen, cfg, root: str) -> None:
    """The loaded model as moetrain's trainer saves one (dist-checkpointing, moetrain.json)."""
    from moetrain.training.checkpointing import TrainState, save_checkpoint

    meta = {"model_config": cfg.to_dict(), "layout": {}, "args": {}, "has_optimizer": False}
    save_checkpoint(root, TrainState(iteration=3), [gen.model], None, None, meta, save_optim=False)


def generate_all(rank, world, cases, tp, pp, ep, prompts, new_tokens, single_rank_checks, save_trainer=None):
    """Per case (name, checkpoint dir of any kind): greedy tokens of the batch, sampled tokens (fixed
    seed) and, on one rank, the KV-cache and padding checks. Every rank returns the same tokens
    (they are broadcast). ``save_trainer`` {name: dir}: also save that case as a trainer checkpoint."""
    from moetrain.inference.sampling import SamplingParams

    out = {}
    for name, path in cases:
        gen, cfg = _generator(path, tp, pp, ep)
        if save_trainer and name in save_trainer:
            _save_trainer_checkpoint(gen, cfg, save_trainer[name])
        greedy = gen.generate(prompts, new_tokens, SamplingParams(greedy=True), keep_logits=single_rank_checks)
        sampled = gen.generate(prompts, 8, SamplingParams(**SAMPLING), seed=7)
        res = {"greedy": [g.output_ids for g in greedy], "sampled": [g.output_ids for g in sampled]}
        if single_rank_checks:
            again = gen.generate(prompts, 8, SamplingParams(**SAMPLING), seed=7)
            res["sampled_again"] = [g.output_ids for g in again]
            # Each decode step's logits (KV cache) against a full recompute of the prefix.
            worst = 0.0
            for g in greedy:
                ids = list(g.prompt_ids)
                for step, logits in enumerate(g.step_logits):
                    ref = gen.full_logits(ids)[0]
                    worst = max(worst, float((logits - ref).abs().max() / ref.abs().max()))
                    ids.append(g.output_ids[step])
            res["cache_vs_recompute"] = worst
            res["alone"] = [gen.generate([p], new_tokens, SamplingParams(greedy=True))[0].output_ids for p in prompts]
        out[name] = res
    return out
