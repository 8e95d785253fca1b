"""Build one pipeline stage (or virtual stage) of a moetrain model as a megatron-core GPTModel."""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_block import get_num_layers_to_build
from megatron.core.transformer.transformer_config import TransformerConfig

from moetrain.models.common import rope
from moetrain.models.common.spec import block_spec
from moetrain.models.config import ModelConfig


def _scale_output(multiplier: float):
    def hook(module, args, output):
        del module, args
        if isinstance(output, tuple):
            return (output[0] * multiplier, *output[1:])
        return output * multiplier

    return hook


def apply_multipliers(model: GPTModel, cfg: ModelConfig) -> None:
    """Grok-1's embedding_multiplier_scale (after the lookup) and output_multiplier_scale (on the
    logits, before the loss), as forward hooks on megatron-core's embedding and output layer."""
    if cfg.embedding_multiplier != 1.0 and model.pre_process:
        model.embedding.register_forward_hook(_scale_output(cfg.embedding_multiplier))
    if cfg.output_multiplier != 1.0 and model.post_process:
        model.output_layer.register_forward_hook(_scale_output(cfg.output_multiplier))


def mark_expert_params(model: GPTModel) -> None:
    """Tag expert weights ``allreduce=False`` so megatron's DDP reduces them over the
    expert-data-parallel group.

    megatron-core tags them only in its Transformer-Engine expert modules; the local
    SequentialMLP experts moetrain uses would otherwise be averaged over the dense data-parallel
    group: with EP > 1 that mixes *different* experts held by different EP ranks, and with
    TP > 1 under expert-TP 1 it misses the TP partner's tokens. Reducing expert grads over the
    expert-DP group is right for every layout (it equals the DP group when ep x etp == tp).
    """
    for name, param in model.named_parameters():
        if ".mlp.experts." in name:
            param.allreduce = False


def build_model(cfg: ModelConfig, config: TransformerConfig, vocab_size: int,
                vp_stage: int | None = None) -> GPTModel:
    """The model chunk this rank holds. ``vocab_size`` is the padded vocabulary."""
    rope.install_rotary_kernel()
    pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    num_local_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    model = GPTModel(
        config=config,
        transformer_layer_spec=block_spec(cfg, num_local_layers),
        vocab_size=vocab_size,
        max_sequence_length=cfg.seq_length,
        pre_process=pre,
        post_process=post,
        share_embeddings_and_output_weights=not cfg.untie_embeddings_and_output_weights,
        position_embedding_type="rope",
        rotary_base=int(cfg.rotary_base),
        vp_stage=vp_stage,
    )
    apply_multipliers(model, cfg)
    mark_expert_params(model)
    return model


def build_model_chunks(cfg: ModelConfig, config: TransformerConfig, vocab_size: int) -> list[GPTModel]:
    """All chunks of this rank: one, or ``vpp`` with interleaved virtual pipeline stages."""
    vpp = config.virtual_pipeline_model_parallel_size
    if not vpp:
        return [build_model(cfg, config, vocab_size)]
    return [build_model(cfg, config, vocab_size, vp_stage=i) for i in range(vpp)]


def model_dtype(config: TransformerConfig) -> torch.dtype:
    return config.params_dtype
