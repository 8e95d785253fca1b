"""Rank-side code for the converter's logits test (loaded by moetrain.testing.spawn in each rank):
build moetrain's model under the checkpoint's layout, load this rank's file with
``load_rank_state_dict`` (what the trainer's --load does) and return the full-vocab logits."""

from __future__ import annotations

import torch
from model_parity_ranks import _gather_vocab


def logits_from_legacy(rank, world, checkpoints, tokens):
    """``checkpoints``: [(ModelConfig, mg dir)]. Returns [logits or None (not the last stage)] per checkpoint."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from moetrain.checkpoint_formats.legacy import load_rank_state_dict, read_legacy_meta
    from moetrain.device import get_backend
    from moetrain.models.builder import build_model
    from moetrain.models.weight_maps import RankCoord
    from moetrain.parallel import ParallelDims
    from moetrain.training.transformer_config import RuntimeOptions, build_transformer_config

    results = []
    for cfg, mg_dir in checkpoints:
        layout = read_legacy_meta(mg_dir).layout
        dims = ParallelDims(world_size=world, tp=layout.tp, pp=layout.pp, ep=layout.ep,
                            num_layer_list=layout.num_layer_list, sequence_parallel=layout.tp > 1)
        dims.validate_model(cfg)
        dims.initialize()
        model_parallel_cuda_manual_seed(7)
        config = build_transformer_config(cfg, dims, RuntimeOptions(dtype="fp32", batch_p2p_comm=get_backend().batch_p2p_comm))
        model = build_model(cfg, config, layout.padded_vocab_size)
        coord = RankCoord(ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
                          ps.get_expert_model_parallel_rank())
        local, _ = load_rank_state_dict(mg_dir, coord, layout)
        missing, unexpected = model.load_state_dict(local, strict=False)
        missing = [k for k in missing if not k.endswith("_extra_state")]
        assert not missing and not unexpected, (coord, missing, unexpected)
        b, s = tokens.shape
        position_ids = torch.arange(s).unsqueeze(0).expand(b, -1)

        def step(data_iterator, chunk, position_ids=position_ids):
            del data_iterator
            out = chunk(tokens, position_ids, None)
            return out, lambda o: (torch.zeros(()), {"logits": _gather_vocab(o).detach()})

        model.eval()
        with torch.no_grad():
            out = get_forward_backward_func()(forward_step_func=step, data_iterator=iter([None]), model=[model],
                                              num_microbatches=1, seq_length=s, micro_batch_size=b, forward_only=True)
        results.append(out[0]["logits"][..., : cfg.vocab_size] if out else None)
    return results
