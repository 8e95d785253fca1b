"""Real ModelLink / MindSpeed-LLM and Megatron-LM recipes (tests/data/recipes/, copied verbatim)
with only the entry point swapped: each resolves through moetrain's validation at its own world
size, or is refused before anything starts for one of the listed reasons.

The user's part is stood in for as tests/test_recipes.py does: the placeholder paths ("your data
path") become paths, and data / tokenizer / checkpoint files that do not exist are not checked.
"""

from __future__ import annotations

import pytest
from recipe_compat import RECIPES, recorded_launch
from test_documented_commands import validate_launch

from moetrain.config import ConfigError

# recipe -> (world size, family built) when it resolves
RESOLVES = {
    "megatron_lm_train_mixtral_8x7b_distributed.sh": (32, "llama", 8),
    "mindspeed_llm_pretrain_grok1_40b_ptd.sh": (32, "grok1", 8),
    "mindspeed_llm_pretrain_grok1_40b_ptd_2024.sh": (32, "grok1", 8),
    "mindspeed_llm_pretrain_llama2_7b_ptd.sh": (8, "llama", None),
    "mindspeed_llm_pretrain_llama3_8b_ptd.sh": (8, "llama", None),
    "mindspeed_llm_tune_llama2_7b_full_ptd.sh": (8, "llama", None),
    "mindspeed_llm_tune_llama2_7b_lora_ptd.sh": (8, "llama", None),
    "mindspeed_llm_tune_mixtral_8x7B_full_ptd.sh": (16, "llama", 8),
    "mindspeed_llm_tune_mixtral_8x7b_lora_ptd.sh": (8, "llama", 8),
}
# recipe -> the listed reason it is refused (docs/migrating.md)
REFUSED = {
    "megatron_lm_train_llama3_8b_h100_fp8.sh": "--fp8-format hybrid: fp8 training is not implemented",
    "mindspeed_llm_pretrain_llama2_7b_ptd_2026.sh": "--ckpt-format torch: moetrain saves megatron-core "
                                                    "dist-checkpoints",
    "mindspeed_llm_pretrain_mixtral_8x7b_ptd.sh": "--context-parallel-size 4: context parallelism is not implemented",
    "mindspeed_llm_tune_llama3_8b_full_ptd.sh": "--rope-scaling-type llama3: rotary scaling",
    "mindspeed_llm_tune_llama3_8b_lora_ptd.sh": "--rope-scaling-type llama3: rotary scaling",
}


def test_every_recipe_has_an_expected_outcome():
    assert sorted(p.name for p in RECIPES.glob("*.sh")) == sorted({**RESOLVES, **REFUSED})
    assert len(RESOLVES) >= 6


@pytest.mark.parametrize("name", sorted(RESOLVES))
def test_recipe_resolves_at_its_world_size(name, tmp_path):
    world, flags = recorded_launch(RECIPES / name, tmp_path)
    run, _ = validate_launch(flags, world, tmp_path)
    want_world, family, experts = RESOLVES[name]
    assert (world, run.model_cfg.family, run.model_cfg.num_experts) == (want_world, family, experts)
    assert run.dims.world_size == world
    if "--lora-target-modules" in flags:
        assert run.cfg.lora.enabled and run.cfg.sft.is_instruction_dataset
    if family == "grok1":  # ModelLink's Grok-1: SwiGLU experts, no soft-cap; said once at start-up
        (note,) = [n for n in run.notes if n.startswith("no --model")]
        assert "activation 'swiglu' (flavor: 'geglu')" in note and "attn_logit_softcapping None" in note


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_recipe_is_refused_for_a_listed_reason(name, tmp_path):
    world, flags = recorded_launch(RECIPES / name, tmp_path)
    with pytest.raises(ConfigError) as e:
        validate_launch(flags, world, tmp_path)
    assert REFUSED[name] in str(e.value), str(e.value)
