"""Megatron-LM / ModelLink / MindSpeed-LLM flags that moetrain's own command line does not spell the same.

Moving a recipe to moetrain should only mean swapping the entry point (``pretrain_gpt.py`` ->
``-m moetrain.pretrain``). Every flag of those projects' Grok-1, Llama-2/3 and Mixtral recipes
(tests/data/recipes/FLAGS.md lists them, with the recipes they come from) is either one of
moetrain's own flags (same name, same meaning: ``moetrain.training.cli``), or gets one of three
treatments here. Nothing is silently ignored: a flag that is in none of these lists is still an
error from the parser.

  mapped   the same meaning, spelled in moetrain's terms (``--swiglu`` -> ``--activation swiglu``),
           or a statement of what moetrain always does (``--use-mcore-models``); a value moetrain
           cannot honour is refused with its reason
  hint     a kernel, fusion or overlap choice that moetrain makes per backend (the kernel table,
           moetrain/kernels/table.py); accepted, listed in one start-up line with what was chosen
  refused  what moetrain does not do; the error says why and what to use instead
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from moetrain.config import ConfigError

# ----------------------------------------------------------------- treatments


@dataclass(frozen=True)
class Mapped:
    """``rewrite(value)`` -> moetrain argv (value None for a flag without one); may raise ConfigError.
    ``takes_value``: False, True (one value) or the number of values."""

    takes_value: bool | int
    rewrite: Callable[[str | None], list[str]]
    meaning: str


@dataclass(frozen=True)
class Hint:
    takes_value: bool
    chosen: str  # what moetrain does instead, for the start-up line


@dataclass(frozen=True)
class Refused:
    takes_value: bool
    reason: str  # why, and what to use instead


def _drop(value: str | None) -> list[str]:
    return []


def _only(flag: str, allowed: tuple[str, ...], reason: str) -> Callable[[str | None], list[str]]:
    """A flag whose only meaningful value(s) moetrain always uses; others are refused."""

    def rewrite(value: str | None) -> list[str]:
        if value not in allowed:
            raise ConfigError(f"{flag} {value}: {reason}")
        return []

    return rewrite


def _rename(flag: str) -> Callable[[str | None], list[str]]:
    return lambda value: [flag] if value is None else [flag, value]


def _tokenizer_type(value: str | None) -> list[str]:
    """moetrain reads the SentencePiece and Hugging Face types by their Megatron names already;
    Megatron-LM's NullTokenizer (for --mock-data) is what moetrain uses when no tokenizer is given."""
    return [] if value == "NullTokenizer" else ["--tokenizer-type", value]


def _dispatcher(value: str | None) -> list[str]:
    """MindSpeed-LLM's alltoall_seq is megatron-core's alltoall since 0.13 (merged there)."""
    return ["--moe-token-dispatcher-type", "alltoall" if value == "alltoall_seq" else value]


def _load_balancing(value: str | None) -> list[str]:
    if value == "none":
        return ["--moe-aux-loss-coeff", "0"]
    if value == "aux_loss":
        return []  # the coefficient is --moe-aux-loss-coeff, as in Megatron-LM
    raise ConfigError(f"--moe-router-load-balancing-type {value}: moetrain balances experts with the auxiliary "
                      "loss (aux_loss, coefficient --moe-aux-loss-coeff) or not at all (none); sinkhorn and "
                      "seq_aux_loss are not implemented")


MAPPED: dict[str, Mapped] = {
    "--use-mcore-models": Mapped(False, _drop, "moetrain always builds megatron-core models"),
    "--disable-bias-linear": Mapped(False, _drop, "moetrain's linear layers have no bias"),
    "--normalization": Mapped(True, _only("--normalization", ("RMSNorm",), "moetrain's families use RMSNorm "
                                          "(Grok-1, Llama, Mixtral); LayerNorm models are not supported"),
                              "RMSNorm, as every moetrain family"),
    "--position-embedding-type": Mapped(True, _only("--position-embedding-type", ("rope",),
                                                    "moetrain's families use rotary embeddings (rope)"),
                                        "rotary embeddings"),
    "--use-rotary-position-embeddings": Mapped(False, _drop, "rotary embeddings"),
    "--no-position-embedding": Mapped(False, _drop, "no learned position table (rotary embeddings)"),
    "--swiglu": Mapped(False, lambda v: ["--activation", "swiglu"], "--activation swiglu"),
    "--group-query-attention": Mapped(False, _drop, "grouped-query attention with --num-query-groups KV heads"),
    "--embedding-multiplier-scale": Mapped(True, _rename("--embedding-multiplier"), "--embedding-multiplier"),
    "--output-multiplier-scale": Mapped(True, _rename("--output-multiplier"), "--output-multiplier"),
    "--tokenizer-type": Mapped(True, _tokenizer_type, "NullTokenizer: --mock-data's token ids span the vocabulary"),
    "--moe-token-dispatcher-type": Mapped(True, _dispatcher, "alltoall_seq: megatron-core's alltoall"),
    "--moe-router-load-balancing-type": Mapped(True, _load_balancing, "aux_loss, or none (--moe-aux-loss-coeff 0)"),
    "--context-parallel-size": Mapped(True, _only("--context-parallel-size", ("1",), "context parallelism is not "
                                                  "implemented; shard long sequences with --tensor-model-parallel-"
                                                  "size and --sequence-parallel instead"), "no context parallelism"),
    "--ckpt-format": Mapped(True, _only("--ckpt-format", ("torch_dist",), "moetrain saves megatron-core "
                                        "dist-checkpoints (torch_dist); convert other formats with "
                                        "ckpt_converters/convert_ckpt.py"), "torch_dist checkpoints"),
    "--recompute-activations": Mapped(False, lambda v: ["--recompute-granularity", "selective"],
                                      "--recompute-granularity selective"),
    "--tensorboard-dir": Mapped(True, lambda v: ["--log-dir", v], "--log-dir (tensorboard/ is written under it)"),
    "--attention-softmax-in-fp32": Mapped(False, _drop, "the attention softmax is computed in fp32"),
    # MindSpeed-LLM's Grok-1 spellings: --post-norm adds the norms after attention and the MoE (Grok-1's
    # sandwich); --input-jitter is argparse store_false there, so passing it turns the router jitter off.
    "--post-norm": Mapped(False, lambda v: ["--sandwich-norm"], "--sandwich-norm (Grok-1's post norms)"),
    "--input-jitter": Mapped(False, _drop, "no router input jitter (MindSpeed-LLM's flag switches it off)"),
    "--spec": Mapped(2, _drop, "each family's own layer spec (moetrain/models/<family>/spec.py)"),
    "--moe-layer-freq": Mapped(True, _only("--moe-layer-freq", ("1", "-1"), "every layer of moetrain's MoE "
                                           "families is an MoE layer"), "every layer is an MoE layer"),
    "--first-k-dense-replace": Mapped(True, _only("--first-k-dense-replace", ("0", "-1"), "moetrain's MoE "
                                                  "families have no dense first layers"), "no dense first layers"),
    "--rotary-percent": Mapped(True, _only("--rotary-percent", ("1.0", "1"), "rotary embeddings cover the whole "
                                           "head in moetrain's families"), "rotary on the whole head"),
    "--stage": Mapped(True, lambda v: _stage(v), "--is-instruction-dataset (supervised fine-tuning)"),
    "--no-pad-to-seq-lengths": Mapped(False, lambda v: ["--variable-seq-lengths"], "--variable-seq-lengths"),
    "--padded-vocab-size": Mapped(True, lambda v: ["--vocab-size", v, "--make-vocab-size-divisible-by", "1"],
                                  "--vocab-size N, unpadded"),
    "--context-parallel-algo": Mapped(True, _drop, "no context parallelism (--context-parallel-size 1)"),
    "--no-check-for-nan-in-loss-and-grad": Mapped(False, _drop, "a NaN / inf loss skips its step; "
                                                  "--max-nan-iters in a row stop the run"),
    "--no-save-rng": Mapped(False, _drop, "RNG states are small and always saved; --no-load-rng skips them"),
}


def _stage(value: str | None) -> list[str]:
    if value != "sft":
        raise ConfigError(f"--stage {value}: moetrain fine-tunes with supervised fine-tuning (--stage sft); "
                          "DPO / reward-model stages are not implemented")
    return ["--is-instruction-dataset"]

# Values that need the whole command line: samples -> iterations (Megatron-LM's sample-based schedule).
SAMPLE_FLAGS = {"--train-samples": "--train-iters", "--lr-decay-samples": "--lr-decay-iters",
                "--lr-warmup-samples": "--lr-warmup-iters"}

_KERNELS = "per backend (kernel table)"
_OVERLAP = "megatron-core's DDP defaults for the backend"
HINTS: dict[str, Hint] = {
    "--use-flash-attn": Hint(False, "fused attention chosen " + _KERNELS),
    "--use-fused-rmsnorm": Hint(False, "RMSNorm chosen " + _KERNELS),
    "--use-fused-swiglu": Hint(False, "the GLU activation chosen " + _KERNELS),
    "--use-fused-rotary-pos-emb": Hint(False, "rotary embeddings chosen " + _KERNELS),
    "--use-fused-ring-attention-update": Hint(False, "no context parallelism, so no ring attention"),
    "--use-mc2": Hint(False, "Ascend's fused matmul + communication is the NPU backend's choice"),
    "--transformer-impl": Hint(True, "moetrain's own layer specs, kernels " + _KERNELS),
    "--no-masked-softmax-fusion": Hint(False, "attention chosen " + _KERNELS),
    "--no-bias-gelu-fusion": Hint(False, "no bias (GELU chosen " + _KERNELS + ")"),
    "--no-bias-swiglu-fusion": Hint(False, "no bias (SwiGLU chosen " + _KERNELS + ")"),
    "--no-bias-dropout-fusion": Hint(False, "no bias, no dropout fusion"),
    "--no-rope-fusion": Hint(False, "rotary embeddings chosen " + _KERNELS),
    "--no-gradient-accumulation-fusion": Hint(False, "gradients accumulate in megatron-core's DDP buffers"),
    "--moe-grouped-gemm": Hint(False, "experts always run as one grouped GEMM per projection "
                                      "(moetrain/models/common/experts.py)"),
    "--moe-permutation-async-comm": Hint(False, "the token dispatcher's own communication (--moe-token-dispatcher-"
                                                "type)"),
    "--overlap-grad-reduce": Hint(False, _OVERLAP),
    "--overlap-param-gather": Hint(False, _OVERLAP),
    "--distributed-backend": Hint(True, "the device layer picks nccl / hccl / gloo for the device"),
    "--num-workers": Hint(True, "data loading in the training processes"),
    "--log-throughput": Hint(False, "tokens/s/p, TFLOPS and MFU are always logged"),
    "--no-shared-storage": Hint(False, "every rank reads and writes the checkpoint directory itself"),
    "--tokenizer-not-use-fast": Hint(False, "the tokenizer's default implementation"),
    "--use-cpu-initialization": Hint(False, "weights are initialised on the device layer's default"),
    "--timing-log-level": Hint(True, "moetrain logs step time per iteration"),
    "--log-timers-to-tensorboard": Hint(False, "step time is in metrics.jsonl and tensorboard"),
    "--log-validation-ppl-to-tensorboard": Hint(False, "validation loss and perplexity are logged"),
    "--log-memory-to-tensorboard": Hint(False, "peak memory per rank is logged"),
    "--log-num-zeros-in-grad": Hint(False, "not logged"),
    "--log-params-norm": Hint(False, "not logged"),
    "--lora-fusion": Hint(False, "LoRA adapters run as their own fp32 GEMMs (moetrain/finetune/lora/layers.py)"),
    "--moe-permute-fusion": Hint(False, "the token dispatcher's permutation " + _KERNELS),
    "--gemm-gradient-accumulation-fusion": Hint(False, "gradients accumulate in megatron-core's DDP buffers"),
    "--reuse-fp32-param": Hint(False, "the optimizer keeps megatron-core's fp32 main parameters"),
    "--use-checkpoint-args": Hint(False, "the architecture comes from the flags / --model and is checked "
                                         "against the checkpoint's metadata"),
}

REFUSED: dict[str, Refused] = {
    "--use-legacy-models": Refused(False, "Megatron's legacy models are not built; moetrain builds megatron-core "
                                          "models (drop the flag)"),
    "--fp8-format": Refused(True, "fp8 training is not implemented; use --bf16"),
    "--fp8-recipe": Refused(True, "fp8 training is not implemented; use --bf16"),
    "--fp8-amax-history-len": Refused(True, "fp8 training is not implemented; use --bf16"),
    "--fp8-amax-compute-algo": Refused(True, "fp8 training is not implemented; use --bf16"),
    "--add-bias-linear": Refused(False, "moetrain's families have no linear biases (Megatron-LM's default "
                                        "adds them: recipes for these models pass --disable-bias-linear)"),
    "--moe-input-jitter-eps": Refused(True, "router input jitter is not implemented; drop the flag "
                                            "(it is a training-noise regulariser, not part of the model)"),
    "--rope-scaling-type": Refused(True, "rotary scaling (Llama 3.1's llama3, yarn) is not implemented; "
                                         "Llama 3 8B uses plain rotary embeddings"),
    "--yaml-cfg": Refused(True, "give the settings as flags, or as moetrain's --config file.yaml"),
}


@dataclass
class Translation:
    argv: list[str]  # moetrain's command line
    hints: list[tuple[str, str]] = field(default_factory=list)  # (flag, what moetrain chose)
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (flag as given, its moetrain meaning)
    max_position_embeddings: int | None = None  # checked against --seq-length once the model is known

    def startup_lines(self) -> list[str]:
        lines = []
        if self.hints:
            lines.append("performance hints accepted; moetrain chooses these itself (moetrain/kernels/table.py, "
                         "docs/migrating.md): " + "; ".join(f"{flag} -> {chosen}" for flag, chosen in self.hints))
        return lines


def _value(argv: list[str], i: int, flag: str) -> str:
    if i + 1 >= len(argv) or (argv[i + 1].startswith("--") and not _is_number(argv[i + 1])):
        raise ConfigError(f"{flag} expects a value")
    return argv[i + 1]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def translate(argv: list[str], own_flags: set[str]) -> Translation:
    """Rewrite the foreign flags of ``argv``; ``own_flags`` are moetrain's (left as they are).
    ``--flag=value`` is split first. Raises ConfigError for a refused flag or value."""
    split: list[str] = []
    for arg in argv:
        if arg.startswith("--") and "=" in arg and arg.split("=", 1)[0] not in own_flags:
            split.extend(arg.split("=", 1))
        else:
            split.append(arg)
    out = Translation([])
    samples: dict[str, int] = {}
    i = 0
    while i < len(split):
        arg = split[i]
        if arg not in MAPPED and (arg in own_flags or not arg.startswith("--")):
            out.argv.append(arg)
            i += 1
            continue
        if arg == "--max-position-embeddings":
            out.max_position_embeddings = int(_value(split, i, arg))
            out.mapped.append((arg, "checked: --seq-length must fit (rotary embeddings have no position table)"))
            i += 2
        elif arg in SAMPLE_FLAGS:
            samples[arg] = int(_value(split, i, arg))
            i += 2
        elif arg in MAPPED:
            m = MAPPED[arg]
            n = int(m.takes_value)
            value = " ".join(_value(split, i + k, arg) for k in range(n)) if n else None
            rewritten = m.rewrite(value)
            out.argv.extend(rewritten)
            if rewritten != [arg] + ([value] if value is not None else []):
                out.mapped.append((arg if value is None else f"{arg} {value}", m.meaning))
            i += 1 + n
        elif arg in HINTS:
            h = HINTS[arg]
            out.hints.append((arg, h.chosen))
            i += 2 if h.takes_value else 1
        elif arg in REFUSED:
            r = REFUSED[arg]
            shown = f"{arg} {_value(split, i, arg)}" if r.takes_value else arg
            raise ConfigError(f"{shown}: {r.reason}")
        else:
            out.argv.append(arg)  # unknown: the parser names it
            i += 1
    if samples:
        out.argv.extend(_samples_to_iters(samples, split))
        out.mapped.extend((f"{k} {v}", SAMPLE_FLAGS[k]) for k, v in samples.items())
    return out


def _samples_to_iters(samples: dict[str, int], argv: list[str]) -> list[str]:
    """Megatron-LM counts these in samples; moetrain's schedule counts iterations of
    --global-batch-size samples. Exact when the counts divide (refused otherwise)."""
    if "--global-batch-size" not in argv:
        raise ConfigError(f"{next(iter(samples))}: converting samples to iterations needs --global-batch-size")
    gbs = int(argv[argv.index("--global-batch-size") + 1])
    out = []
    for flag, n in samples.items():
        iters = n / gbs
        if not iters.is_integer():
            raise ConfigError(f"{flag} {n} is not a whole number of global batches of {gbs}; give "
                              f"{SAMPLE_FLAGS[flag]} {math.ceil(iters)} instead")
        out += [SAMPLE_FLAGS[flag], str(int(iters))]
    return out
