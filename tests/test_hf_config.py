"""ModelConfig <-> HF config round trips for every flavor."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, MixtralConfig

from moetrain.models import get_flavor, list_flavors
from moetrain.models.grok1.hf_config import Grok1Config
from moetrain.models.hf_config import from_hf_config, to_hf_config

_IGNORED = ("name", "published_params", "extra")

# hpcai-tech/grok-1 config.json (architecture keys).
_GROK1_RELEASE = {
    "architectures": ["Grok1ModelForCausalLM"], "model_type": "grok-1", "vocab_size": 131072, "hidden_size": 6144,
    "intermediate_size": 32768, "num_hidden_layers": 64, "num_attention_heads": 48, "num_key_value_heads": 8,
    "attn_output_multiplier": 0.08838834764831845, "embedding_multiplier_scale": 78.38367176906169,
    "output_multiplier_scale": 0.5773502691896257, "max_attn_value": 30.0, "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "num_experts_per_tok": 2, "num_experts": 8,
    "output_router_logits": False, "router_aux_loss_coef": 0.001,
}


def _arch(cfg) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if k not in _IGNORED}


@pytest.mark.parametrize("name", list_flavors())
def test_round_trip(name):
    cfg = get_flavor(name)
    hf = to_hf_config(cfg)
    expected_cls = {"Grok1ModelForCausalLM": Grok1Config, "LlamaForCausalLM": LlamaConfig,
                    "MixtralForCausalLM": MixtralConfig}[cfg.hf_architecture]
    assert type(hf) is expected_cls
    assert _arch(from_hf_config(hf.to_dict(), name=name)) == _arch(cfg)
    assert _arch(from_hf_config(hf)) == _arch(cfg)  # a config object is accepted too


def test_grok1_release_config_is_the_314b_flavor():
    assert _arch(from_hf_config(_GROK1_RELEASE)) == _arch(get_flavor("grok1-314b"))
    hf = to_hf_config(get_flavor("grok1-314b")).to_dict()
    for key, value in _GROK1_RELEASE.items():
        if key not in ("output_router_logits", "router_aux_loss_coef"):
            assert hf[key] == value, key
    assert hf["gelu_approximate"] == "none" and hf["rope_theta"] == 10000.0


def test_llama3_rope_theta_and_gqa():
    hf = to_hf_config(get_flavor("llama3-8b"))
    assert hf.rope_parameters["rope_theta"] == 500000.0 and hf.num_key_value_heads == 8
    legacy = {k: v for k, v in hf.to_dict().items() if k != "rope_parameters"} | {"rope_theta": 500000.0}
    assert from_hf_config(legacy).rotary_base == 500000.0  # transformers 4 style key


def test_unrepresentable_configs_are_refused():
    with pytest.raises(ValueError, match="Grok-1 numerics"):
        to_hf_config(get_flavor("llama-tiny", attn_logit_softcapping=30.0))
    with pytest.raises(ValueError, match="renormalises"):
        to_hf_config(get_flavor("mixtral-tiny", moe_router_pre_softmax=True))
    with pytest.raises(ValueError, match="unsupported model_type"):
        from_hf_config({"model_type": "gpt2", "hidden_size": 8, "num_attention_heads": 2})
