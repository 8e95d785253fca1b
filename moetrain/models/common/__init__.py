"""Parts shared by every model family: the megatron-core layer spec (spec.py) and moetrain's modules
in it — RMSNorm (norms.py), core attention with soft-capping (core_attention.py), the sandwich-norm
layer (sandwich_layer.py), the gated activation (activations.py), grouped-GEMM experts (experts.py),
the rotary hook (rope.py) — and the weight-map machinery (weight_map.py)."""
