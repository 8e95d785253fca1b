"""``moetrain.inference.generate`` flags (MindSpeed-LLM's ``inference.py`` names) and their checks.

Everything that can be wrong with the input is checked here, in the launcher's process before any
rank or model exists: the checkpoint and its model, the layout it is re-sharded to, the tokenizer,
every prompt (empty, or longer than the model's positions), the sampling settings and the output
file. :func:`prepare` raises ``ConfigError`` / ``LayoutError`` with one message naming the flag,
the file and line.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from moetrain.config import ConfigError
from moetrain.inference.loading import CheckpointInfo, inspect_checkpoint
from moetrain.inference.sampling import SamplingParams
from moetrain.inference.stopping import StopRule
from moetrain.parallel import ParallelDims

TASKS = ("greedy", "do_sample", "chat")


@dataclass
class GenerateConfig:
    load: str = ""
    lora_load: str | None = None  # a LoRA adapter checkpoint on top of --load (not merged)
    model: str | None = None  # a flavor: the architecture of a checkpoint without metadata, or a check
    device: str | None = None
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    expert_model_parallel_size: int = 1
    num_layer_list: str | None = None
    sequence_parallel: bool = False
    dtype: str = "fp32"  # --bf16 / --fp16
    tokenizer_type: str | None = None
    tokenizer_model: str | None = None
    tokenizer_name_or_path: str | None = None
    task: str = "greedy"
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.95
    seed: int = 1234
    prompt_type: str | None = None
    history_turns: int = 3
    system: str | None = None
    add_bos: bool = False
    prompt: str | None = None
    input_file: str | None = None
    output_file: str | None = None
    stream: bool = False
    micro_batch_size: int = 4  # prompts per forward

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(greedy=self.task == "greedy", temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p)


def build_parser(prog: str = "moetrain-generate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Generate text from a moetrain, converted or HF checkpoint.")
    a = p.add_argument
    a("--load", required=True, help="trainer checkpoint, converted (convert_ckpt.py) or Hugging Face directory")
    a("--lora-load", help="a LoRA adapter checkpoint (a LoRA run's --save) trained on --load: generation runs "
                          "the base with the adapters, at any layout")
    a("--model", help="flavor (e.g. grok1-tiny): needed for a dist-checkpoint without moetrain's metadata; "
                      "otherwise checked against the checkpoint")
    a("--device", choices=("npu", "cuda", "cpu"), help="default: auto (npu > cuda > cpu)")
    a("--tensor-model-parallel-size", type=int, default=1)
    a("--pipeline-model-parallel-size", type=int, default=1)
    a("--expert-model-parallel-size", type=int, default=1)
    a("--num-layer-list", help="layers per pipeline stage, e.g. '3,5'")
    a("--sequence-parallel", action="store_true", help="accepted; generation runs TP without it (see docs)")
    a("--bf16", action="store_true")
    a("--fp16", action="store_true")
    a("--tokenizer-type", help="default: what the checkpoint was trained with")
    a("--tokenizer-model")
    a("--tokenizer-name-or-path")
    a("--task", choices=TASKS, default="greedy")
    a("--max-new-tokens", type=int, default=128)
    a("--temperature", type=float, default=0.7)
    a("--top-k", type=int, default=50)
    a("--top-p", type=float, default=0.95)
    a("--seed", type=int, default=1234)
    a("--prompt-type", help="chat template of the preprocessor (chatml, llama2, llama3, grok1, plain)")
    a("--history-turns", type=int, default=3, help="--task chat: earlier exchanges kept in the prompt")
    a("--system", help="system prompt for --prompt-type")
    a("--add-bos", action="store_true", help="prepend the tokenizer's BOS to raw prompts (templates add their own)")
    a("--prompt", help="one prompt")
    a("--input-file", help="prompts.jsonl: one {\"prompt\": ...} per line")
    a("--output-file", help="results .jsonl (one object per prompt); default: print")
    a("--stream", action="store_true", help="print tokens as they come")
    a("--micro-batch-size", type=int, default=4, help="prompts per forward")
    return p


def parse_args(argv: list[str] | None, prog: str = "moetrain-generate") -> GenerateConfig:
    ns = build_parser(prog).parse_args(argv)
    if ns.bf16 and ns.fp16:
        raise ConfigError("--bf16 and --fp16 exclude each other")
    values = {k: v for k, v in vars(ns).items() if k not in ("bf16", "fp16")}
    return GenerateConfig(**values, dtype="bf16" if ns.bf16 else "fp16" if ns.fp16 else "fp32")


@dataclass
class Prompt:
    text: str
    ids: list[int]
    where: str  # "--prompt" or "prompts.jsonl:3", for messages


@dataclass
class PreparedGeneration:
    cfg: GenerateConfig
    checkpoint: CheckpointInfo
    adapter: object | None  # moetrain.finetune.lora.adapter_checkpoint.AdapterCheckpoint of --lora-load
    dims: ParallelDims
    tokenizer: object
    template: object | None
    stop: StopRule
    prompts: list[Prompt] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # start-up lines (e.g. sequence parallelism is off)

    def encode(self, text: str, history: list[tuple[str, str]] | None = None) -> list[int]:
        """A user message (with earlier (user, reply) exchanges) as the ids generation continues from."""
        return encode_prompt(self.cfg, self.template, self.tokenizer, text, history)


def encode_prompt(cfg: GenerateConfig, template, tokenizer, text: str, history=None) -> list[int]:
    if template is None:
        ids = tokenizer.encode_text(text)
        return ([tokenizer.bos] if cfg.add_bos and tokenizer.bos is not None else []) + ids
    from moetrain.data.templates import Message

    messages = []
    for user, reply in history or []:
        messages += [Message("user", user), Message("assistant", reply)]
    return template.prompt(messages + [Message("user", text)], cfg.system, tokenizer)


def _dims(cfg: GenerateConfig, world_size: int, model_cfg, dist_backend: str) -> ParallelDims:
    layer_list = tuple(int(x) for x in cfg.num_layer_list.split(",")) if cfg.num_layer_list else None
    # Expert weights sharded over EP only (the weight map's layout); SP off: a decode step has one
    # token per sequence, which TP ranks cannot split.
    dims = ParallelDims(world_size=world_size, tp=cfg.tensor_model_parallel_size,
                        pp=cfg.pipeline_model_parallel_size, ep=cfg.expert_model_parallel_size,
                        num_layer_list=layer_list)
    dims.validate_model(model_cfg, dist_backend, training=False)
    return dims


def _tokenizer(cfg: GenerateConfig, info: CheckpointInfo):
    from moetrain.data.tokenizers import build_tokenizer

    recorded = info.tokenizer
    kind = cfg.tokenizer_type or recorded.get("tokenizer_type")
    if kind is None:
        raise ConfigError(f"--load {info.path} records no tokenizer; give --tokenizer-type with --tokenizer-model "
                          "or --tokenizer-name-or-path")
    same = cfg.tokenizer_type is None
    model_file = cfg.tokenizer_model or (recorded.get("tokenizer_model") if same else None)
    name = cfg.tokenizer_name_or_path or (recorded.get("tokenizer_name_or_path") if same else None)
    try:
        tok = build_tokenizer(kind, name_or_path=name, model_file=model_file)
    except (OSError, ValueError) as e:
        raise ConfigError(f"tokenizer: {e}") from None
    if tok.vocab_size > info.model_cfg.vocab_size:
        raise ConfigError(f"the tokenizer has {tok.vocab_size} tokens but the model's vocabulary is "
                          f"{info.model_cfg.vocab_size}: not the tokenizer this model was trained with")
    return tok


def _stop_rule(tokenizer, template) -> StopRule:
    ids = {tokenizer.eos} if tokenizer.eos is not None else set()
    texts = []
    if template is not None and template.end_of_turn:
        marker = tokenizer.encode_text(template.end_of_turn)
        if len(marker) == 1:
            ids.add(marker[0])  # a special token: exact, no decoding needed
        else:
            texts.append(template.end_of_turn)
    return StopRule(ids, texts, decode=tokenizer.detokenize)


def _read_prompts(cfg: GenerateConfig) -> list[tuple[str, str]]:
    if cfg.task == "chat":
        if cfg.prompt or cfg.input_file:
            raise ConfigError("--task chat reads prompts from the terminal; drop --prompt / --input-file")
        return []
    if bool(cfg.prompt is not None) == bool(cfg.input_file):
        raise ConfigError(f"--task {cfg.task} needs exactly one of --prompt TEXT and --input-file prompts.jsonl")
    if cfg.prompt is not None:
        return [(cfg.prompt, "--prompt")]
    path = Path(cfg.input_file)
    if not path.is_file():
        raise ConfigError(f"--input-file {path}: no such file")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not JSON ({e.msg}); each line must be {{\"prompt\": \"...\"}}") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ConfigError(f"{where}: each line must be an object with a string \"prompt\"")
        out.append((record["prompt"], where))
    if not out:
        raise ConfigError(f"--input-file {path} holds no prompts")
    return out


def _check_settings(cfg: GenerateConfig) -> list[str]:
    problems = cfg.sampling.check()
    if cfg.max_new_tokens < 1:
        problems.append(f"--max-new-tokens must be >= 1, got {cfg.max_new_tokens}")
    if cfg.micro_batch_size < 1:
        problems.append(f"--micro-batch-size must be >= 1, got {cfg.micro_batch_size}")
    if cfg.history_turns < 0:
        problems.append(f"--history-turns must be >= 0, got {cfg.history_turns}")
    if cfg.output_file and not Path(cfg.output_file).resolve().parent.is_dir():
        problems.append(f"--output-file {cfg.output_file}: its directory does not exist")
    return problems


def prepare(cfg: GenerateConfig, world_size: int | None = None, dist_backend: str = "gloo") -> PreparedGeneration:
    """Every check that needs no process group; raises with one message."""
    problems = _check_settings(cfg)
    if problems:
        raise ConfigError("; ".join(problems))
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    info = inspect_checkpoint(cfg.load, cfg.model)
    adapter = None
    if cfg.lora_load:
        from moetrain.finetune.lora.adapter_checkpoint import check_adapter_fits, inspect_adapter

        adapter = inspect_adapter(cfg.lora_load)
        check_adapter_fits(adapter, info.model_cfg, f"--load {info.path}")
    dims = _dims(cfg, world, info.model_cfg, dist_backend)
    tokenizer = _tokenizer(cfg, info)
    template = None
    if cfg.prompt_type:
        from moetrain.data.templates import get_template

        try:
            template = get_template(cfg.prompt_type)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    elif cfg.task == "chat":
        raise ConfigError("--task chat needs --prompt-type (the template the model was fine-tuned with)")
    prepared = PreparedGeneration(cfg, info, adapter, dims, tokenizer, template, _stop_rule(tokenizer, template))
    if adapter is not None:
        prepared.notes.append(f"--lora-load {cfg.lora_load}: {adapter.describe()} on the base")
    limit = info.model_cfg.seq_length
    for text, where in _read_prompts(cfg):
        if not text.strip():
            raise ConfigError(f"{where}: the prompt is empty")
        ids = prepared.encode(text)
        if len(ids) >= limit:
            raise ConfigError(f"{where}: the prompt is {len(ids)} tokens but the model has {limit} positions "
                              f"(it must leave room for at least one new token); shorten it")
        prepared.prompts.append(Prompt(text, ids, where))
    if cfg.sequence_parallel:
        prepared.notes.append("--sequence-parallel: off for generation (a decode step has one token per "
                              "sequence, which TP ranks cannot split); TP shards the weights as in training")
    return prepared
