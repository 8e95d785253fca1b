"""Analytic parameter counts against published sizes and against HF models built on the meta device."""

import pytest
import torch

from moetrain.models.param_count import count_parameters, padded_vocab_size, parameters_per_rank, split_layers
from moetrain.models.registry import FLAVORS, get_flavor

PUBLISHED = [name for name, cfg in FLAVORS.items() if cfg.published_params]


def test_published_flavors_listed():
    assert {"grok1-314b", "llama2-7b", "llama2-13b", "llama3-8b", "mixtral-8x7b"} <= set(PUBLISHED)


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_size_within_one_percent(name):
    cfg = FLAVORS[name]
    assert count_parameters(cfg).total == pytest.approx(cfg.published_params, rel=0.01)


def test_mixtral_active_parameters():
    # Mixtral-8x7B is published as 12.9B active parameters per token.
    assert count_parameters(FLAVORS["mixtral-8x7b"]).active_per_token == pytest.approx(12.9e9, rel=0.01)


def _hf_count(model_cls, config) -> int:
    with torch.device("meta"):
        model = model_cls(config)
    return sum(p.numel() for p in model.parameters())  # parameters() de-duplicates tied weights


def _llama_hf_config(cfg, tied):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups, head_dim=cfg.head_dim, tie_word_embeddings=tied,
        attention_bias=False, mlp_bias=False,
    )


@pytest.mark.parametrize("tied", [False, True])
def test_llama_tiny_matches_hf(tied):
    from transformers import LlamaForCausalLM

    cfg = get_flavor("llama-tiny", untie_embeddings_and_output_weights=not tied)
    assert count_parameters(cfg).total == _hf_count(LlamaForCausalLM, _llama_hf_config(cfg, tied))


def test_llama2_7b_matches_hf():
    from transformers import LlamaForCausalLM

    cfg = FLAVORS["llama2-7b"]
    assert count_parameters(cfg).total == _hf_count(LlamaForCausalLM, _llama_hf_config(cfg, False))


def test_mixtral_tiny_matches_hf():
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = get_flavor("mixtral-tiny")
    hf = MixtralConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups, head_dim=cfg.head_dim,
        num_local_experts=cfg.num_experts, num_experts_per_tok=cfg.moe_router_topk,
        tie_word_embeddings=False,
    )
    pc = count_parameters(cfg)
    assert pc.total == _hf_count(MixtralForCausalLM, hf)
    assert pc.expert == cfg.num_layers * cfg.num_experts * 3 * cfg.hidden_size * cfg.ffn_hidden_size


def test_grok1_tiny_by_hand():
    # No Grok-1 class ships with transformers: count hpcai-tech/grok-1's tensors by hand.
    h, f, q, kv, v, n, e = 64, 128, 64, 32, 512, 4, 4
    per_layer = h * (q + 2 * kv) + q * h + 4 * h + e * h + e * 3 * h * f  # attn, 4 norms, router, experts
    assert count_parameters(get_flavor("grok1-tiny")).total == n * per_layer + v * h + h  # tied, final norm


def _reassemble(cfg, ranks, tp, ep, etp):
    return sum(r.tp_sharded * tp + r.tp_replicated + r.expert * ep * etp for r in ranks)


@pytest.mark.parametrize("name,tp,pp,ep", [
    ("grok1-40b", 4, 2, 2), ("grok1-tiny", 2, 2, 2), ("mixtral-8x7b", 2, 4, 8), ("llama2-7b", 4, 1, 1),
    ("llama-tiny", 2, 4, 1),
])
def test_per_rank_sums_to_total(name, tp, pp, ep):
    cfg = FLAVORS[name]
    ranks = parameters_per_rank(cfg, tp, pp, ep)
    assert len(ranks) == pp and sum(r.layers for r in ranks) == cfg.num_layers
    assert ranks[0].embedding > 0 and ranks[-1].output > 0
    # a tied output layer is a second copy on the last stage when pp > 1 (megatron-core)
    tied_copy = cfg.vocab_size * cfg.hidden_size if (pp > 1 and not cfg.untie_embeddings_and_output_weights) else 0
    assert _reassemble(cfg, ranks, tp, ep, tp) == count_parameters(cfg).total + tied_copy


def test_per_rank_expert_tp_and_layer_list():
    cfg = FLAVORS["grok1-40b"]
    ranks = parameters_per_rank(cfg, tp=4, pp=2, ep=2, etp=1, num_layer_list=[5, 3])
    assert [r.layers for r in ranks] == [5, 3]
    one_expert = 3 * cfg.hidden_size * cfg.ffn_hidden_size
    assert ranks[0].expert == 5 * 4 * one_expert  # 8 experts / EP 2, unsplit (expert-TP 1)
    assert _reassemble(cfg, ranks, 4, 2, 1) == count_parameters(cfg).total + cfg.vocab_size * cfg.hidden_size
    with pytest.raises(ValueError, match="num-layer-list"):
        split_layers(8, 2, [4, 3])
    with pytest.raises(ValueError, match="--ep"):
        parameters_per_rank(cfg, 1, 1, 3)


def test_padded_vocab():
    assert padded_vocab_size(32000, tp=1) == 32000
    assert padded_vocab_size(32000, tp=8) == 32768
    assert padded_vocab_size(131072, tp=4) == 131072
