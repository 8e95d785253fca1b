"""Llama and Mixtral flavors (Mixtral is the Llama family with experts), tiny debug ones included."""

from __future__ import annotations

from moetrain.models.config import ModelConfig

LLAMA = dict(family="llama", activation="swiglu", hf_architecture="LlamaForCausalLM")
MIXTRAL = dict(
    family="llama", activation="swiglu", num_experts=8, moe_router_topk=2,
    moe_router_pre_softmax=False, hf_architecture="MixtralForCausalLM",
)

FLAVORS = (
    ModelConfig(name="llama2-7b", num_layers=32, hidden_size=4096, ffn_hidden_size=11008,
                num_attention_heads=32, num_query_groups=32, vocab_size=32000, seq_length=4096,
                published_params=6.74e9, **LLAMA),
    ModelConfig(name="llama2-13b", num_layers=40, hidden_size=5120, ffn_hidden_size=13824,
                num_attention_heads=40, num_query_groups=40, vocab_size=32000, seq_length=4096,
                published_params=13.0e9, **LLAMA),
    ModelConfig(name="llama3-8b", num_layers=32, hidden_size=4096, ffn_hidden_size=14336,
                num_attention_heads=32, num_query_groups=8, vocab_size=128256, seq_length=8192,
                rotary_base=500000.0, published_params=8.03e9, **LLAMA),
    # A ~1.2B dense flavor for single-GPU throughput measurements.
    ModelConfig(name="llama-1b", num_layers=16, hidden_size=2048, ffn_hidden_size=8192,
                num_attention_heads=32, num_query_groups=8, vocab_size=128256, seq_length=4096,
                rotary_base=500000.0, **LLAMA),
    ModelConfig(name="mixtral-8x7b", num_layers=32, hidden_size=4096, ffn_hidden_size=14336,
                num_attention_heads=32, num_query_groups=8, vocab_size=32000, seq_length=32768,
                rotary_base=1e6, published_params=46.7e9, **MIXTRAL),
    # Tiny debug flavors: 4 layers (PP2-able), heads and KV heads divisible by TP2, 4 experts (EP2-able).
    ModelConfig(name="llama-tiny", num_layers=4, hidden_size=64, ffn_hidden_size=128,
                num_attention_heads=4, num_query_groups=2, vocab_size=512, seq_length=64, **LLAMA),
    ModelConfig(name="mixtral-tiny", num_layers=4, hidden_size=64, ffn_hidden_size=128,
                num_attention_heads=4, num_query_groups=2, vocab_size=512, seq_length=64,
                **{**MIXTRAL, "num_experts": 4}),
)
