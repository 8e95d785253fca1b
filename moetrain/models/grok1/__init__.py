"""Grok-1 (xAI; HF layout of hpcai-tech/grok-1). Where each part of the model lives:

- flavors (grok1-314b, grok1-40b, grok1-tiny) and their numerics: ``moetrain/models/registry.py``
  (embedding_multiplier 78.38, output_multiplier 0.577, attn_logit_softcapping 30, sandwich_norm,
  GeGLU with exact GELU, router softmax-then-top-2 without renormalisation)
- attention (scale, ``30 * tanh(scores / 30)``, causal mask, fp32 softmax):
  ``moetrain/models/common/core_attention.py`` -> ``moetrain/kernels/attention.py``
- the four RMSNorms per layer (sandwich): ``moetrain/models/common/sandwich_layer.py``
- embedding / output multipliers: ``moetrain/models/builder.py`` (``apply_multipliers``)
- MoE router and dispatcher settings: ``moetrain/training/transformer_config.py``; experts:
  ``moetrain/models/common/experts.py``
- HF <-> megatron-core weight map (fused QKV per query group, [linear; linear_v] fc1):
  ``moetrain/models/grok1/weight_map.py``
- the HF-compatible reference model ``Grok1ModelForCausalLM``: ``moetrain/models/grok1/hf_model.py``
"""
