"""Llama (and, with experts, Mixtral): ``flavors.py`` (llama2-7b/13b, llama3-8b, llama-1b,
mixtral-8x7b, llama-tiny, mixtral-tiny), ``family.py``, ``hf_config.py`` (LlamaConfig /
MixtralConfig), ``weight_map.py`` (fused QKV, [gate; up] fc1, Mixtral experts in both transformers
layouts). The decoder layer is the shared plain one (``moetrain/models/common/spec.py``: RMSNorm,
RoPE, GQA, SwiGLU, MoE).
"""
