"""Parts shared by every model family: megatron-core layer-spec building blocks (spec.py) and
moetrain's modules in them - RMSNorm (norms.py), core attention with optional soft-capping
(core_attention.py), the gated activation (activations.py), stacked experts computed as grouped
GEMMs (experts.py), the rotary hook (rope.py) - and the weight-map machinery (weight_map.py)."""
