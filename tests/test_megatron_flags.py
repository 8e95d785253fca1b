"""moetrain.compat: Megatron-LM / ModelLink flags mapped, accepted as hints, or refused with a reason;
a model built from architecture flags alone, with its differences from the family's flavor named."""

from __future__ import annotations

import pytest

from moetrain.compat.megatron_flags import HINTS, MAPPED, REFUSED, translate
from moetrain.config import ConfigError
from moetrain.training.cli import build_parser, parse_args

OWN = set(build_parser()._option_string_actions)
GROK_40B_FLAGS = ["--num-layers", "8", "--hidden-size", "6144", "--num-attention-heads", "48", "--num-query-groups",
                  "8", "--group-query-attention", "--ffn-hidden-size", "32768", "--num-experts", "8", "--swiglu",
                  "--embedding-multiplier-scale", "78.38367176906169", "--output-multiplier-scale",
                  "0.5773502691896257", "--vocab-size", "131072", "--seq-length", "8192",
                  "--max-position-embeddings", "8192", "--mock-data", "--micro-batch-size", "1",
                  "--global-batch-size", "16"]


def test_the_tables_do_not_shadow_moetrain_flags():
    # A foreign flag spelled like one of moetrain's would change the meaning of moetrain's own;
    # --tokenizer-type and --moe-token-dispatcher-type are own flags with a value rewrite.
    assert (set(MAPPED) - {"--tokenizer-type", "--moe-token-dispatcher-type"}) & OWN == set()
    assert set(HINTS) & OWN == set() and set(REFUSED) & OWN == set()
    assert not set(MAPPED) & set(HINTS) and not set(HINTS) & set(REFUSED)


def test_mapped_flags_take_moetrain_meanings():
    t = translate(["--swiglu", "--use-mcore-models", "--normalization", "RMSNorm", "--position-embedding-type",
                   "rope", "--embedding-multiplier-scale=2.5", "--moe-router-load-balancing-type", "none",
                   "--recompute-activations", "--global-batch-size", "8", "--train-samples", "80",
                   "--lr-warmup-samples", "16"], OWN)
    assert t.argv == ["--activation", "swiglu", "--embedding-multiplier", "2.5", "--moe-aux-loss-coeff", "0",
                      "--recompute-granularity", "selective", "--global-batch-size", "8", "--train-iters", "10",
                      "--lr-warmup-iters", "2"]
    assert ("--use-mcore-models", "moetrain always builds megatron-core models") in t.mapped


def test_hints_are_accepted_and_listed_once():
    t = translate(["--use-flash-attn", "--transformer-impl", "transformer_engine", "--overlap-grad-reduce",
                   "--lr", "1e-4"], OWN)
    assert t.argv == ["--lr", "1e-4"]
    (line,) = t.startup_lines()
    assert "--use-flash-attn" in line and "--transformer-impl" in line and "--overlap-grad-reduce" in line


@pytest.mark.parametrize("argv,message", [
    (["--context-parallel-size", "2"], "--context-parallel-size 2: context parallelism is not implemented"),
    (["--normalization", "LayerNorm"], "--normalization LayerNorm: moetrain's families use RMSNorm"),
    (["--fp8-format", "hybrid"], "--fp8-format hybrid: fp8 training is not implemented; use --bf16"),
    (["--add-bias-linear"], "--add-bias-linear: moetrain's families have no linear biases"),
    (["--use-legacy-models"], "--use-legacy-models: Megatron's legacy models are not built"),
    (["--moe-router-load-balancing-type", "sinkhorn"], "sinkhorn and seq_aux_loss are not implemented"),
    (["--global-batch-size", "8", "--train-samples", "81"], "--train-samples 81 is not a whole number of global "
                                                             "batches of 8; give --train-iters 11 instead"),
])
def test_refused_flags_say_why_and_what_instead(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        translate(argv, OWN)


def test_own_flags_with_foreign_values_are_rewritten():
    t = translate(["--moe-token-dispatcher-type", "alltoall_seq", "--tokenizer-type", "Llama2Tokenizer"], OWN)
    assert t.argv == ["--moe-token-dispatcher-type", "alltoall", "--tokenizer-type", "Llama2Tokenizer"]


def test_context_parallel_of_one_is_what_moetrain_does():
    assert translate(["--context-parallel-size", "1"], OWN).argv == []


def test_an_unknown_flag_still_fails_in_the_parser(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--not-a-megatron-flag"])
    assert "unrecognized arguments: --not-a-megatron-flag" in capsys.readouterr().err


def test_architecture_flags_without_model_build_what_they_say():
    from moetrain.pretrain import prepare

    run, _ = prepare(GROK_40B_FLAGS, world_size=1)
    cfg = run.model_cfg
    assert (cfg.family, cfg.num_layers, cfg.hidden_size, cfg.num_experts, cfg.activation) == \
        ("grok1", 8, 6144, 8, "swiglu")
    assert cfg.attn_logit_softcapping is None and cfg.embedding_multiplier == pytest.approx(78.38367176906169)
    (note,) = [n for n in run.notes if n.startswith("no --model")]
    assert "differs from the released grok1-40b in:" in note
    assert "activation 'swiglu' (flavor: 'geglu')" in note and "attn_logit_softcapping None (flavor: 30.0)" in note


def test_model_plus_flags_keeps_overriding_the_flavor():
    from moetrain.pretrain import prepare

    run, _ = prepare(["--model", "grok1-tiny", "--num-layers", "2", "--mock-data"], world_size=1)
    assert run.model_cfg.num_layers == 2 and run.model_cfg.attn_logit_softcapping == 30.0
    assert not [n for n in run.notes if n.startswith("no --model")]


def test_seq_length_beyond_max_position_embeddings_is_refused():
    from moetrain.pretrain import prepare

    with pytest.raises(ConfigError, match="--seq-length 8192 exceeds --max-position-embeddings 4096"):
        prepare([*GROK_40B_FLAGS, "--max-position-embeddings", "4096"], world_size=1)


def test_architecture_without_gated_mlp_is_refused():
    from moetrain.pretrain import prepare

    flags = [f for f in GROK_40B_FLAGS if f != "--swiglu"]
    with pytest.raises(ConfigError, match="add --swiglu"):
        prepare(flags, world_size=1)


def test_dry_run_prints_model_layout_and_plan_and_starts_nothing(capsys, monkeypatch):
    from moetrain.pretrain import main

    monkeypatch.setenv("WORLD_SIZE", "16")
    flags = [*GROK_40B_FLAGS, "--tensor-model-parallel-size", "4", "--pipeline-model-parallel-size", "2",
             "--expert-model-parallel-size", "2", "--sequence-parallel", "--bf16", "--use-flash-attn", "--dry-run"]
    assert main(flags) == 0
    out = capsys.readouterr().out
    assert "model: grok1-from-flags (family grok1, 8 experts, top-2)" in out
    assert "layout: world 16 = TP4 x PP2 x DP2; EP2 +SP; layers per stage [4, 4]" in out
    assert "stage 1: 4 layers, per rank" in out and "GiB planned" in out
    assert "performance hints accepted" in out and out.rstrip().endswith("dry run: nothing was started")


def test_docs_migrating_lists_every_flag_of_the_tables():
    from pathlib import Path

    from moetrain.compat.megatron_flags import SAMPLE_FLAGS

    text = (Path(__file__).resolve().parents[1] / "docs" / "migrating.md").read_text()
    for flag in [*MAPPED, *HINTS, *REFUSED, *SAMPLE_FLAGS, "--max-position-embeddings"]:
        assert f"| `{flag}` |" in text, flag


def test_dry_run_of_a_lora_launch_plans_the_frozen_base(tmp_path):
    from test_documented_commands import validate_launch

    from moetrain.training.dry_run import describe_run

    flags = ["--model", "grok1-tiny", "--is-instruction-dataset", "--data-path", "sft/alpaca",
             "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", "tok.model",
             "--global-batch-size", "8", "--lora-target-modules", "linear_qkv", "linear_fc1"]
    lora_run, _ = validate_launch(flags, 1, tmp_path)
    full_run, _ = validate_launch(flags[:-3], 1, tmp_path)
    lora_lines, full_lines = describe_run(lora_run), describe_run(full_run)
    assert any("LoRA r 16 on linear_qkv linear_fc1: the base is frozen" in line for line in lora_lines)
    grads = [line.split("gradients ")[1].split(",")[0] for line in (lora_lines + full_lines) if "planned" in line]
    assert grads[0] != grads[1], grads  # adapters' gradients only, not the base's
