"""Llama (and, with experts, Mixtral). The layer spec is the shared one
(``moetrain/models/common/spec.py``: RMSNorm, RoPE, GQA, SwiGLU); flavors are in
``moetrain/models/registry.py``; the HF <-> megatron-core weight map (fused QKV, [gate; up] fc1,
Mixtral experts in both transformers layouts) is ``moetrain/models/llama/weight_map.py``.
"""
