"""Flavor registry: named presets of ModelConfig, including tiny debug flavors for tests and the demo."""

from __future__ import annotations

from moetrain.models.config import ModelConfig

# Grok-1 numerics (hpcai-tech/grok-1 config.json).
_GROK1 = dict(
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
_LLAMA = dict(family="llama", activation="swiglu", hf_architecture="LlamaForCausalLM")
_MIXTRAL = dict(
    family="llama", activation="swiglu", num_experts=8, moe_router_topk=2,
    moe_router_pre_softmax=False, hf_architecture="MixtralForCausalLM",
)


def _flavors() -> dict[str, ModelConfig]:
    flavors = [
        ModelConfig(name="grok1-314b", num_layers=64, hidden_size=6144, ffn_hidden_size=32768,
                    num_attention_heads=48, num_query_groups=8, kv_channels=128, vocab_size=131072,
                    seq_length=8192, published_params=314e9, **_GROK1),
        # Same shape with 8 layers: the reference framework's 16-device "40B" recipe.
        ModelConfig(name="grok1-40b", num_layers=8, hidden_size=6144, ffn_hidden_size=32768,
                    num_attention_heads=48, num_query_groups=8, kv_channels=128, vocab_size=131072,
                    seq_length=8192, **_GROK1),
        ModelConfig(name="llama2-7b", num_layers=32, hidden_size=4096, ffn_hidden_size=11008,
                    num_attention_heads=32, num_query_groups=32, vocab_size=32000, seq_length=4096,
                    published_params=6.74e9, **_LLAMA),
        ModelConfig(name="llama2-13b", num_layers=40, hidden_size=5120, ffn_hidden_size=13824,
                    num_attention_heads=40, num_query_groups=40, vocab_size=32000, seq_length=4096,
                    published_params=13.0e9, **_LLAMA),
        ModelConfig(name="llama3-8b", num_layers=32, hidden_size=4096, ffn_hidden_size=14336,
                    num_attention_heads=32, num_query_groups=8, vocab_size=128256, seq_length=8192,
                    rotary_base=500000.0, published_params=8.03e9, **_LLAMA),
        # A ~1.2B dense flavor for single-GPU throughput measurements.
        ModelConfig(name="llama-1b", num_layers=16, hidden_size=2048, ffn_hidden_size=8192,
                    num_attention_heads=32, num_query_groups=8, vocab_size=128256, seq_length=4096,
                    rotary_base=500000.0, **_LLAMA),
        ModelConfig(name="mixtral-8x7b", num_layers=32, hidden_size=4096, ffn_hidden_size=14336,
                    num_attention_heads=32, num_query_groups=8, vocab_size=32000, seq_length=32768,
                    rotary_base=1e6, published_params=46.7e9, **_MIXTRAL),
        # --- tiny debug flavors: 4 layers (PP2-able), heads and KV heads divisible by TP2, 4 experts (EP2-able)
        ModelConfig(name="grok1-tiny", num_layers=4, hidden_size=64, ffn_hidden_size=128,
                    num_attention_heads=4, num_query_groups=2, kv_channels=16, vocab_size=512,
                    seq_length=64, **{**_GROK1, "num_experts": 4}),
        ModelConfig(name="llama-tiny", num_layers=4, hidden_size=64, ffn_hidden_size=128,
                    num_attention_heads=4, num_query_groups=2, vocab_size=512, seq_length=64, **_LLAMA),
        ModelConfig(name="mixtral-tiny", num_layers=4, hidden_size=64, ffn_hidden_size=128,
                    num_attention_heads=4, num_query_groups=2, vocab_size=512, seq_length=64,
                    **{**_MIXTRAL, "num_experts": 4}),
    ]
    return {f.name: f for f in flavors}


FLAVORS: dict[str, ModelConfig] = _flavors()


def list_flavors() -> list[str]:
    return sorted(FLAVORS)


def get_flavor(name: str, **overrides) -> ModelConfig:
    """The named flavor, with field overrides applied (``get_flavor("grok1-tiny", num_layers=8)``)."""
    if name not in FLAVORS:
        raise ValueError(f"unknown model flavor {name!r}; choose one of: {', '.join(list_flavors())}")
    return FLAVORS[name].replace(**overrides) if overrides else FLAVORS[name]
