"""Grok-1 flavors: the release (314B), the reference framework's 8-layer "40B", a tiny debug one."""

from __future__ import annotations

from moetrain.models.config import ModelConfig

# Grok-1 numerics (hpcai-tech/grok-1 config.json).
NUMERICS = dict(
    family="grok1",
    activation="geglu",
    gelu_approximate="none",
    num_experts=8,
    moe_router_topk=2,
    moe_router_pre_softmax=True,
    norm_epsilon=1e-5,
    rotary_base=10000.0,
    untie_embeddings_and_output_weights=False,  # the HF release ties lm_head to embed_tokens
    embedding_multiplier=78.38367176906169,
    output_multiplier=0.5773502691896257,
    attn_logit_softcapping=30.0,
    sandwich_norm=True,
    hf_architecture="Grok1ModelForCausalLM",
)

FLAVORS = (
    ModelConfig(name="grok1-314b", num_layers=64, hidden_size=6144, ffn_hidden_size=32768,
                num_attention_heads=48, num_query_groups=8, kv_channels=128, vocab_size=131072,
                seq_length=8192, published_params=314e9, **NUMERICS),
    # Same shape with 8 layers: the reference framework's 16-device "40B" recipe.
    ModelConfig(name="grok1-40b", num_layers=8, hidden_size=6144, ffn_hidden_size=32768,
                num_attention_heads=48, num_query_groups=8, kv_channels=128, vocab_size=131072,
                seq_length=8192, **NUMERICS),
    # Tiny debug flavor: 4 layers (PP2-able), heads and KV heads divisible by TP2, 4 experts (EP2-able).
    ModelConfig(name="grok1-tiny", num_layers=4, hidden_size=64, ffn_hidden_size=128,
                num_attention_heads=4, num_query_groups=2, kv_channels=16, vocab_size=512,
                seq_length=64, **{**NUMERICS, "num_experts": 4}),
)
