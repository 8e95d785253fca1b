"""Build one pipeline stage (or virtual stage) of a moetrain model as a megatron-core GPTModel:
the family's layer spec in megatron-core's decoder block, then the family's hooks."""

from __future__ import annotations

from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_block import get_num_layers_to_build
from megatron.core.transformer.transformer_config import TransformerConfig

from moetrain.models.common import rope
from moetrain.models.common.spec import block_spec
from moetrain.models.config import ModelConfig
from moetrain.models.registry import family_of


def mark_expert_params(model: GPTModel) -> None:
    """Tag expert weights ``allreduce=False`` so megatron's DDP reduces them over the
    expert-data-parallel group.

    megatron-core tags them only in its own expert modules; moetrain's GroupedExperts
    (``mlp.experts.weight1`` / ``weight2``) would otherwise be averaged over the dense data-parallel
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
    family = family_of(cfg)
    pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    num_local_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    model = GPTModel(
        config=config,
        transformer_layer_spec=block_spec(family.layer_spec(cfg), num_local_layers),
        vocab_size=vocab_size,
        max_sequence_length=cfg.seq_length,
        pre_process=pre,
        post_process=post,
        share_embeddings_and_output_weights=not cfg.untie_embeddings_and_output_weights,
        position_embedding_type="rope",
        rotary_base=int(cfg.rotary_base),
        vp_stage=vp_stage,
    )
    family.after_build(model, cfg)  # e.g. Grok-1's embedding / logit multipliers
    mark_expert_params(model)
    return model


def build_model_chunks(cfg: ModelConfig, config: TransformerConfig, vocab_size: int) -> list[GPTModel]:
    """All chunks of this rank: one, or ``vpp`` with interleaved virtual pipeline stages."""
    vpp = config.virtual_pipeline_model_parallel_size
    if not vpp:
        return [build_model(cfg, config, vocab_size)]
    return [build_model(cfg, config, vocab_size, vp_stage=i) for i in range(vpp)]
