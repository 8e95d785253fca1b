"""Grok-1 (xAI; HF layout of hpcai-tech/grok-1). Where each part of the model lives, all here:

- ``flavors.py``: grok1-314b, grok1-40b, grok1-tiny and the numerics (embedding_multiplier 78.38,
  output_multiplier 0.577, attn_logit_softcapping 30, sandwich_norm, GeGLU with exact GELU, router
  softmax-then-top-2 without renormalisation)
- ``spec.py``: the decoder layer - attention with the soft-cap ``30 * tanh(scores / 30)`` (computed by
  ``moetrain/models/common/core_attention.py`` -> ``moetrain/kernels/attention.py``) and the MoE block
- ``sandwich_layer.py``: the four RMSNorms per layer
- ``multipliers.py``: embedding / output multipliers (hooks on the built model)
- ``weight_map.py``: HF <-> megatron-core tensors (fused QKV per query group, [linear; linear_v] fc1)
- ``hf_config.py``: ``Grok1Config`` and its mapping to / from ModelConfig
- ``hf_model.py``: the HF-compatible reference model ``Grok1ModelForCausalLM``
- ``family.py``: the registered description tying these together
MoE router and dispatcher settings (megatron-core's): ``moetrain/training/transformer_config.py``;
experts: ``moetrain/models/common/experts.py``.
"""
