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


# ---------------------------------------------------------------- two recipes train, reduced in size
# Overrides after the recipe's own flags (the later flag wins, as in Megatron-LM): sizes, the world
# of 8 CPU ranks (layout), and a few iterations. Everything else is the recipe's, bf16 included.
SMALL = ["--num-layers", "2", "--hidden-size", "64", "--ffn-hidden-size", "128", "--num-attention-heads", "4",
         "--num-query-groups", "2", "--seq-length", "64", "--max-position-embeddings", "64",
         "--micro-batch-size", "1", "--global-batch-size", "8", "--train-iters", "2", "--log-interval", "1"]


def _corpus(root) -> str:
    """A pretraining corpus big enough for the recipes' splits (Megatron-LM's 99990,8,2 needs 25,000
    documents for one test document)."""
    from conftest_data import run, sp_args, write_jsonl

    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly box jam".split()
    docs = [{"text": " ".join(words[(i + k) % len(words)] for k in range(12 + i % 9))} for i in range(30000)]
    src = write_jsonl(root / "corpus.jsonl", docs)
    assert run(["--input", str(src), *sp_args(), "--append-eod", "--output-prefix", str(root / "corpus")]) == 0
    return str(root / "corpus_text_document")


@pytest.mark.multirank
def test_two_recipes_reduced_in_size_train_on_8_cpu_ranks(tmp_path):
    from conftest_data import sp_model
    from recipe_compat_ranks import train_recipes

    from moetrain.testing.spawn import run_on_ranks

    corpus, tok = _corpus(tmp_path), sp_model()
    llama, mixtral = tmp_path / "llama2", tmp_path / "mixtral"
    _, llama_flags = recorded_launch(RECIPES / "mindspeed_llm_pretrain_llama2_7b_ptd.sh", llama, {
        "data path": corpus, "tokenizer path": tok, "model save ckpt path": str(llama / "save"),
        "model ckpt path": str(llama / "load")})
    _, mixtral_flags = recorded_launch(RECIPES / "megatron_lm_train_mixtral_8x7b_distributed.sh", mixtral,
                                       positional=[str(mixtral / "ckpt"), tok, corpus])
    runs = {"llama2": [*llama_flags, *SMALL, "--log-dir", str(llama / "logs")],
            "mixtral": [*mixtral_flags, *SMALL, "--num-experts", "4", "--tensor-model-parallel-size", "2",
                        "--pipeline-model-parallel-size", "2", "--expert-model-parallel-size", "2",
                        "--log-dir", str(mixtral / "logs")]}
    results = run_on_ranks(8, train_recipes, (runs,), timeout=600)
    for name in runs:
        losses = results[0][name]
        assert sorted(losses) == [1, 2] and all(5.5 < v < 7.0 for v in losses.values()), (name, losses)  # ~ln 512, untrained
    from moetrain.checkpoint_formats.directory import read_latest

    assert read_latest(llama / "save") == 2 and read_latest(mixtral / "ckpt") == 2  # the recipes' --save
