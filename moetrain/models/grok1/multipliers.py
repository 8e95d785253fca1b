"""Grok-1's two scalar multipliers on megatron-core's GPTModel.

``embedding_multiplier_scale`` (78.38) multiplies the token embeddings after the lookup and
``output_multiplier_scale`` (0.577) the logits before the loss; both are forward hooks on the
embedding and output layer, so megatron-core's modules (and their TP / PP sharding) are unchanged.
"""

from __future__ import annotations

from moetrain.models.config import ModelConfig


def _scale_output(multiplier: float):
    def hook(module, args, output):
        del module, args
        if isinstance(output, tuple):
            return (output[0] * multiplier, *output[1:])
        return output * multiplier

    return hook


def apply_multipliers(model, cfg: ModelConfig) -> None:
    """Hooks on the chunk's embedding (first stage) and output layer (last stage)."""
    if cfg.embedding_multiplier != 1.0 and model.pre_process:
        model.embedding.register_forward_hook(_scale_output(cfg.embedding_multiplier))
    if cfg.output_multiplier != 1.0 and model.post_process:
        model.output_layer.register_forward_hook(_scale_output(cfg.output_multiplier))
