"""Every command printed in README.md and docs/*.md runs as written, or passes the launch's own checks.

Commands are taken from fenced shell blocks (every line), console blocks (``$ `` lines), indented
blocks and inline code (lines / spans that start like a command: ``python``, ``torchrun``, ``bash``,
``make``, ``pip``, a script path, or a word followed by a flag), with ``\\`` continuations joined
and ``#`` comments dropped. Each one gets exactly one class, and ``test_every_command_is_classified``
fails on a command this file does not know, so a new kind of command cannot rot unnoticed:

- ran: executed here as printed (the script's ``__main__`` in this process, no interpreter start-up)
  in a scratch directory holding the inputs it names (``populate``): ``tools/plan.py``,
  ``tools/preprocess_data.py``, ``tools/merge_datasets.py``, ``tools/benchmark.py`` reports, ``--help``.
- validated: too big to run here (torchrun launches, 16-device recipes, the benchmarks, checkpoint
  conversion of released models), so put through the checks a launch makes before any work:
  ``moetrain.pretrain.prepare(ARGS, world_size=N*M)`` for ``torchrun --nproc-per-node N --nnodes M -m
  moetrain.pretrain ARGS`` and for the recipes (their flags recorded as in tests/test_recipes.py);
  ``convert_ckpt.py``'s command line and target layout against the family's released model;
  ``--help`` of a benchmark; pip extras and constraint files.
- template: has a ``<placeholder>`` or ``...``; its program and flags must exist.
- make-target: every target and variable is the Makefile's.

Printed output is compared with what the tool prints now (``...`` in it skips lines): the two plans
in docs/planner.md and the report excerpt in docs/benchmarking.md. The planner figures in the
docs/benchmarks.md table and memory bullet, and the error messages docs/planner.md quotes, are checked
too. When a number changes, re-paste the tool's output (the failure shows it).

docs/preprocess.md's first command, run on the c4 sample in ../shared with Grok-1's tokenizer, is the
data docs/training.md's launch is validated against (``test_preprocess_then_train``): real data, split
and tokenizer checks. Commands that read ../shared are skipped, with the reason, where it is absent.

Only these paths are substituted (``PATH_MAP``); users' own files are stood in for in the scratch
directory (``populate``), and a launch's data / tokenizer checks are stubbed only where the file it
names does not exist, as in tests/test_recipes.py.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import json
import os
import re
import runpy
import shlex
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest_data import DOCS, write_jsonl
from test_recipes import _recorded_launch, _StandInTokenizer
from test_report import _write_run

from moetrain.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared"
GROK = SHARED / "tokenizers" / "grok1" / "tokenizer.model"
C4 = SHARED / "data" / "c4_demo.jsonl"
DOC_FILES = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]


@functools.lru_cache(maxsize=1)
def c4_dataset() -> str | None:
    """The dataset docs/preprocess.md's first command writes from the c4 sample (None without ../shared)."""
    if not (C4.is_file() and GROK.is_file()):
        return None
    cmd = next(c for c in extract("docs/preprocess.md") if c.argv[:2] == ["python", "tools/preprocess_data.py"])
    root = Path(tempfile.mkdtemp(prefix="moetrain_doc_c4_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    populate(root)
    rc, _, err = run_script(cmd.argv[1], map_paths(cmd.argv[2:]), root)
    assert rc == 0, f"{cmd.id}: {err}"
    return str(root / (option(cmd.argv, "--output-prefix") + "_text_document"))


# The only substitutions made in documented commands (argument prefixes; nothing else is changed).
PATH_MAP: dict[str, Callable[[], str | None]] = {
    # The docs are written from the repository root, beside the sample data in ../shared.
    "../shared/": lambda: f"{SHARED.resolve()}/" if SHARED.is_dir() else None,
    # docs/training.md trains on `make demo`'s corpus; here it trains on the c4 sample, as
    # preprocessed by docs/preprocess.md's first command (the preprocess -> train flow).
    "demo_out/data/demo_text_document": c4_dataset,
    "demo_out/tokenizer/tokenizer.model": lambda: str(GROK.resolve()) if GROK.is_file() else None,
}

# What the documented commands read, created in the directory they run in, at the paths they name.
STANDINS_FROM_SHARED = {"corpus.jsonl": C4, "tokenizer.model": GROK}


def populate(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, target in STANDINS_FROM_SHARED.items():  # the c4 sample and Grok-1's tokenizer
        if target.is_file():
            (root / name).symlink_to(target.resolve())
    (root / "data").mkdir()
    write_jsonl(root / "data" / "docs.jsonl", [{"text": d} for d in DOCS])  # `--input data/`: a directory of jsonl
    for name, kind in (("llama-tokenizer", "llama"), ("llama3-tokenizer", "llama3")):
        (root / name).symlink_to(hf_tokenizer(kind))  # local Hugging Face tokenizer directories
    write_dataset(root / "a_text_document", [[5, 6, 7], [8, 9]])  # merge_datasets.py inputs
    write_dataset(root / "b_text_document", [[10, 11, 12, 13]])
    write_jsonl(root / "prompts.jsonl", [{"prompt": "The Python interpreter"}, {"prompt": "def main():"}])
    for log_dir in ("runs/x", "logs/grok1_40b"):  # finished training runs for tools/benchmark.py
        _write_run(root / log_dir)


@functools.cache
def hf_tokenizer(kind: str) -> Path:
    """A small byte-level BPE saved as a local Hugging Face tokenizer directory, with the family's specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bos, eos, *more = {"llama": ["<s>", "</s>", "<unk>"],
                       "llama3": ["<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>", "<|start_header_id|>",
                                  "<|end_header_id|>"]}[kind]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(DOCS * 10, trainers.BpeTrainer(vocab_size=400, special_tokens=[bos, eos, *more],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    out = Path(tempfile.mkdtemp(prefix=f"moetrain_doc_{kind}_tok_"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos).save_pretrained(out)
    return out


def write_dataset(prefix: Path, docs: list[list[int]]) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.int32)
    for d in docs:
        builder.add_document(np.asarray(d, dtype=np.int32), [len(d)])
    builder.finalize(f"{prefix}.idx")


# ---------------------------------------------------------------------------------------------- extraction

SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh"}
PROGRAMS = {"python", "python3", "torchrun", "bash", "sh", "make", "pip", "tensorboard", "moetrain-pretrain",
            "moetrain-generate"}
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PLACEHOLDER = re.compile(r"<[^<>\s][^<>]*>")


@dataclass
class Command:
    doc: str
    line: int
    text: str
    where: str  # shell block, console block, indented block, inline
    outputs: list[str] = field(default_factory=list)  # "# -> ..." comments under it: files it writes
    printed: list[str] | None = None  # the output printed with it
    printed_line: int = 0

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    @functools.cached_property
    def tokens(self) -> list[str] | None:
        # a placeholder such as <the CUDA wheel index> is one word
        text = PLACEHOLDER.sub(lambda m: re.sub(r"\s+", "_", m.group(0)), self.text)
        try:
            return shlex.split(text, comments=True)
        except ValueError:
            return None

    @property
    def env(self) -> dict[str, str]:
        env = {}
        for tok in self.tokens or []:
            if not ENV.match(tok):
                break
            key, value = tok.split("=", 1)
            env[key] = value
        return env

    @property
    def argv(self) -> list[str]:
        return (self.tokens or [])[len(self.env):]


def looks_like_command(text: str) -> bool:
    words = text.split()
    while words and ENV.match(words[0]):
        words.pop(0)
    if len(words) < 2:
        return False
    first = words[0]
    return (Path(first).name in PROGRAMS or ("/" in first and first.endswith((".py", ".sh")))
            or bool(re.fullmatch(r"[a-z][a-z0-9_-]*", first) and re.match(r"--?[A-Za-z]", words[1])))


def _block_commands(doc: str, body: list[str], first_line: int, where: str) -> list[Command]:
    """Commands of a code block: every line (shell), ``$ `` lines (console) or command-like lines."""
    cmds: list[Command] = []
    k = 0
    while k < len(body):
        s = body[k].strip()
        if where == "console block":
            if not s.startswith("$ "):
                if cmds:
                    if cmds[-1].printed is None:
                        cmds[-1].printed, cmds[-1].printed_line = [], first_line + k
                    cmds[-1].printed.append(body[k])
                k += 1
                continue
            s = s[2:]
        if not s or s.startswith("#"):
            if s.startswith("# ->") and cmds:
                cmds[-1].outputs.append(s[4:].strip())
            k += 1
            continue
        start = k
        while s.endswith("\\") and k + 1 < len(body):
            k += 1
            s = s[:-1].rstrip() + " " + body[k].strip()
        k += 1
        if where == "indented block" and not looks_like_command(s):
            continue
        cmds.append(Command(doc, first_line + start, s, where))
    return cmds


@functools.cache
def extract(doc: str) -> tuple[Command, ...]:
    lines = (REPO / doc).read_text(encoding="utf-8").splitlines()
    cmds: list[Command] = []
    paragraph: list[tuple[int, str]] = []
    previous: list[Command] = []  # the shell block just above (only blank lines between)

    def flush_paragraph() -> None:
        text = "\n".join(line for _, line in paragraph)
        for m in re.finditer(r"`([^`]+)`", text):
            span = m.group(1).replace("\\|", "|").replace("\n", " ")
            if looks_like_command(span):
                line = paragraph[0][0] + text.count("\n", 0, m.start())
                cmds.append(Command(doc, line, span.removeprefix("$ "), "inline"))
        paragraph.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        if fence:
            flush_paragraph()
            mark, lang = fence.group(1), fence.group(2).lower()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith(mark):
                j += 1
            body = lines[i + 1:j]
            if lang in SHELL_LANGS:
                previous = _block_commands(doc, body, i + 2, "shell block")
                cmds += previous
            elif lang == "":
                block = _block_commands(doc, body, i + 2, "console block")
                if not block and previous and previous[-1].printed is None:
                    previous[-1].printed, previous[-1].printed_line = body, i + 2  # the output of the block above
                cmds += block
                previous = []
            else:
                previous = []
            i = j + 1
            continue
        if line.startswith(("    ", "\t")) and (i == 0 or not lines[i - 1].strip()) and not paragraph:
            j = i
            while j < len(lines) and (lines[j].startswith(("    ", "\t")) or not lines[j].strip()):
                j += 1
            cmds += _block_commands(doc, [ln[4:] for ln in lines[i:j]], i + 1, "indented block")
            previous = []
            i = j
            continue
        if line.strip():
            paragraph.append((i + 1, line))
            previous = []
        else:
            flush_paragraph()
        i += 1
    flush_paragraph()
    return tuple(cmds)


# ---------------------------------------------------------------------------------------------- running


class Unclassified(Exception):
    """A command shape this file does not know how to run or validate."""


class NeedsShared(Exception):
    """The command reads the sample data in ../shared, which is absent."""


def option(argv: list[str], flag: str) -> str | None:
    for k, tok in enumerate(argv):
        if tok == flag and k + 1 < len(argv):
            return argv[k + 1]
        if tok.startswith(flag + "="):
            return tok.split("=", 1)[1]
    return None


def map_paths(argv: list[str]) -> list[str]:
    out = []
    for tok in argv:
        head, eq, value = tok.partition("=") if tok.startswith("--") and "=" in tok else ("", "", tok)
        for prefix, target in PATH_MAP.items():
            if value == prefix or (prefix.endswith("/") and value.startswith(prefix)):
                new = target()
                if new is not None:
                    value = new + value[len(prefix):] if prefix.endswith("/") else new
                break
        out.append(head + eq + value)
    return out


def needs_shared(argv: list[str]) -> None:
    for tok in argv:
        if (tok.startswith("../shared/") or tok in STANDINS_FROM_SHARED) and not SHARED.is_dir():
            raise NeedsShared(f"{tok}: ../shared is absent ({SHARED.resolve()})")


def run_script(script: str, args: list[str], cwd: Path) -> tuple[int, str, str]:
    """``python script args`` in cwd, in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv, list(sys.path), os.getcwd()
    sys.argv = [script, *args]
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(REPO / script), run_name="__main__")
                rc = 0
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
    finally:
        sys.argv, sys.path[:] = saved[0], saved[1]
        os.chdir(saved[2])
    return rc, out.getvalue(), err.getvalue()


@functools.cache
def help_flags(script: str) -> frozenset[str]:
    """The flags a command line accepts, from its --help (a repo script, or moetrain.pretrain)."""
    if script == "moetrain.pretrain":
        from moetrain.training.cli import parse_args

        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            parse_args(["--help"])
        text = out.getvalue()
    else:
        rc, text, err = run_script(script, ["--help"], REPO)
        assert rc == 0, f"{script} --help: exit status {rc}: {err}"
    return frozenset(re.findall(r"--[A-Za-z0-9][\w-]*", text))


def check_flags(script: str, args: list[str]) -> None:
    unknown = [a.split("=")[0] for a in args if a.startswith("--") and a.split("=")[0] not in help_flags(script)]
    assert not unknown, f"{script} has no {', '.join(unknown)} (see its --help)"


def check_printed(cmd: Command, output: str) -> None:
    """Each run of printed lines between ``...`` elisions appears, in order, in the tool's output."""
    actual = [ln.rstrip() for ln in output.splitlines()]
    segments, current = [], []
    for ln in [*(cmd.printed or []), "..."]:
        if ln.strip() == "...":
            while current and not current[-1]:
                current.pop()
            while current and not current[0]:
                current.pop(0)
            if current:
                segments.append(current)
            current = []
        else:
            current.append(ln.rstrip())
    pos = 0
    for seg in segments:
        found = next((k for k in range(pos, len(actual) - len(seg) + 1) if actual[k:k + len(seg)] == seg), None)
        if found is None:
            raise AssertionError(
                f"the output printed at {cmd.doc}:{cmd.printed_line} is not what the command prints now "
                f"(from {seg[0]!r} on); re-paste it. The command prints:\n" + "\n".join(actual))
        pos = found + len(seg)


def check_make(cmd: Command, ws: Path) -> str | None:
    text = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))
    variables = set(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)\s*[?:+]?=", text, re.M))
    for tok in cmd.argv[1:]:
        if ENV.match(tok):
            assert tok.split("=")[0] in variables, f"the Makefile has no variable {tok.split('=')[0]}"
        elif not tok.startswith("-"):
            assert tok in targets, f"the Makefile has no target {tok!r} (targets: {', '.join(sorted(targets))})"
    return None


def check_template(cmd: Command, ws: Path) -> str | None:
    argv = cmd.argv
    name = Path(argv[0]).name
    if name in ("python", "python3"):
        assert (REPO / argv[1]).is_file(), f"{argv[1]} is not a file of the repository"
        check_flags(argv[1], argv[2:])
    elif name == "torchrun":
        entry = next((e for e in ENTRIES if e in argv), None)
        assert entry, f"a torchrun template must launch -m one of {ENTRIES}"
        check_flags("moetrain.pretrain", argv[argv.index(entry) + 1:])
    elif name == "tensorboard":
        import importlib.util

        assert importlib.util.find_spec("tensorboard"), "tensorboard is not installed (a dependency of moetrain)"
    else:
        raise AssertionError(f"no check for a template of {argv[0]}")
    return None


def run_tool(cmd: Command, ws: Path, expect_rc: int = 0) -> tuple[str, str]:
    args = map_paths(cmd.argv[2:])
    needs_shared(args)
    rc, out, err = run_script(cmd.argv[1], args, ws)
    assert rc == expect_rc, f"exit status {rc} (expected {expect_rc}): {(err or out).strip()[-2000:]}"
    return out, err


def run_help(cmd: Command, ws: Path) -> str:
    out, _ = run_tool(cmd, ws)
    assert out.strip(), "--help printed nothing"
    return out


def run_plan(cmd: Command, ws: Path) -> str:
    # exit status 1 = "does not fit", as documented; expected where the printed plan says so
    out, _ = run_tool(cmd, ws, expect_rc=1 if any("DOES NOT FIT" in ln for ln in cmd.printed or []) else 0)
    return out


def claimed_outputs(comments: list[str]) -> list[str]:
    """Files a ``# -> a_{x,y}_document.bin / .idx and b.json`` comment promises."""
    paths: list[str] = []
    group: list[str] = []
    for tok in re.findall(r"[\w./{},-]*\.(?:bin|idx|json)\b", " ".join(comments)):
        if tok.startswith("."):  # "x.bin / .idx": the same stems
            group = [g.rsplit(".", 1)[0] + tok for g in group]
        else:
            m = re.search(r"\{([^}]*)\}", tok)
            group = [tok[:m.start()] + alt + tok[m.end():] for alt in m.group(1).split(",")] if m else [tok]
        paths += group
    return paths


def run_preprocess(cmd: Command, ws: Path) -> str:
    out, err = run_tool(cmd, ws)
    prefix = option(cmd.argv, "--output-prefix")
    sidecar = json.loads((ws / f"{prefix}_preprocess.json").read_text())
    own = [p for p in sidecar["inputs"] if str(p).endswith("_preprocess.json")]
    assert not own, f"read a preprocessing sidecar as a corpus: {own}"
    for name, o in sidecar["outputs"].items():
        assert o["documents"] > 0, f"{name}: no documents"
        assert (ws / f"{o['prefix']}.bin").is_file() and (ws / f"{o['prefix']}.idx").is_file()
    missing = [p for p in claimed_outputs(cmd.outputs) if not (ws / p).is_file()]
    assert not missing, f"the '# ->' comment names files it did not write: {missing}"
    return out + err


def run_merge(cmd: Command, ws: Path) -> str:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    out, err = run_tool(cmd, ws)
    inputs = cmd.argv[cmd.argv.index("--input") + 1:]
    inputs = inputs[:next((k for k, a in enumerate(inputs) if a.startswith("-")), len(inputs))]
    merged = IndexedDataset(str(ws / option(cmd.argv, "--output-prefix")))
    assert len(merged) == sum(len(IndexedDataset(str(ws / p))) for p in inputs)
    return out + err


def run_benchmark(cmd: Command, ws: Path) -> str:
    out, _ = run_tool(cmd, ws)
    report = Path(option(cmd.argv, "--out-dir") or option(cmd.argv, "--log-dir"))
    for suffix in ("json", "md", "png"):
        assert (ws / report / f"report.{suffix}").is_file(), f"no {report}/report.{suffix}"
    return out


ENTRIES = ("moetrain.pretrain", "moetrain.finetune.sft")
GENERATE = "moetrain.inference.generate"
# Checkpoints the docs name that only `make demo` writes, and the flavor it trains.
DEMO_CHECKPOINTS = {"demo_out/ckpt": "grok1-tiny", "demo_out/ckpt_sft": "grok1-tiny"}


def torchrun_launch(argv: list[str]) -> tuple[int, list[str]]:
    """``torchrun --nproc-per-node N [--nnodes M] ... -m moetrain.pretrain ARGS`` -> (N*M, ARGS);
    ``-m moetrain.finetune.sft`` is the same program with ``--is-instruction-dataset``."""
    assert "-m" in argv and argv[argv.index("-m") + 1] in ENTRIES, f"torchrun of anything but {ENTRIES}"
    launcher, k = {}, 1
    while argv[k] != "-m":
        key, _, value = argv[k].partition("=")
        if not value:
            value, k = argv[k + 1], k + 1
        launcher[key.replace("_", "-")] = value
        k += 1
    known = {"--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port"}
    assert set(launcher) <= known, f"torchrun options this test does not model: {sorted(set(launcher) - known)}"
    args = argv[k + 2:]
    if argv[k + 1] == "moetrain.finetune.sft" and "--is-instruction-dataset" not in args:
        args = [*args, "--is-instruction-dataset"]
    return int(launcher.get("--nproc-per-node", 1)) * int(launcher.get("--nnodes", 1)), args


def validate_launch(args: list[str], world: int, cwd: Path) -> tuple[object, list[str]]:
    """``moetrain.pretrain.prepare`` for this world size; stubs only the data / tokenizer checks whose
    files do not exist (the user's, as in tests/test_recipes.py). Returns (run, what was stood in for)."""
    from moetrain.pretrain import prepare
    from moetrain.training import validate
    from moetrain.training.cli import parse_args

    stood_in = []
    with pytest.MonkeyPatch.context() as m:
        m.chdir(cwd)
        cfg = parse_args(args)
        d = cfg.data
        if cfg.sft.is_instruction_dataset:
            from moetrain.training.sft_data import is_instruction_data

            if d.data_path and not is_instruction_data(d.data_path[0]):
                m.setattr(validate, "_check_instruction_data", lambda cfg, seq_length: None)
                stood_in.append("data")
        elif d.data_path and any(not Path(p + ".idx").is_file() for p in d.data_path):
            m.setattr(validate, "_check_data", lambda cfg: None)  # the files' presence
            m.setattr(validate, "check_splits", lambda paths, split: None)  # and their document counts
            stood_in.append("data")
        if cfg.checkpoint.finetune and cfg.checkpoint.load and not Path(cfg.checkpoint.load).exists():
            # A converted checkpoint the doc's (validated, not run) convert_ckpt.py command would write.
            m.setattr(validate.converted_load, "is_converted_checkpoint", lambda root: True)
            m.setattr(validate.converted_load, "check_converted", lambda root, model_cfg, dims: None)
            stood_in.append("checkpoint")
        tok = d.tokenizer_model or d.tokenizer_name_or_path
        if tok and not Path(tok).exists():
            m.setattr(validate, "_tokenizer", lambda cfg: None)
            stood_in.append("tokenizer")
        run, _ = prepare(args, world_size=world)
    assert run.dims.world_size == world and run.num_microbatches >= 1
    from moetrain.training.dry_run import describe_run

    # What --dry-run prints for the launch: the planner takes every documented layout too.
    lines = describe_run(run)
    assert lines[-1] == "dry run: nothing was started" and sum("planned" in line for line in lines) == run.dims.pp
    return run, stood_in


def validate_generate(args: list[str], world: int, cwd: Path) -> None:
    """``moetrain.inference.options.prepare`` for this world size: the layout against the model, the
    prompts, the settings. A checkpoint or tokenizer that does not exist here (``make demo``'s) is
    stood in for by its flavor / a stand-in tokenizer, as in tests/test_recipes.py."""
    from moetrain.inference import options
    from moetrain.inference.loading import CheckpointInfo
    from moetrain.models import get_flavor

    with pytest.MonkeyPatch.context() as m:
        m.chdir(cwd)
        cfg = options.parse_args(args)
        stand_in = not Path(cfg.load).exists()
        if stand_in:
            flavor = cfg.model or DEMO_CHECKPOINTS.get(cfg.load.rstrip("/"))
            assert flavor, f"--load {cfg.load} does not exist here and names no --model to stand in for"
            m.setattr(options, "inspect_checkpoint",
                      lambda load, model: CheckpointInfo(Path(load), "trainer", get_flavor(flavor), {}))
        if cfg.lora_load and not Path(cfg.lora_load).exists():  # the adapter of a documented LoRA run
            from moetrain.finetune.lora import adapter_checkpoint

            def stand_in_adapter(path, flag="--lora-load"):
                model = get_flavor(cfg.model or DEMO_CHECKPOINTS[cfg.load.rstrip("/")])
                return adapter_checkpoint.AdapterCheckpoint(Path(path), model, 16, 32.0, ("linear_qkv",), 1)

            m.setattr(adapter_checkpoint, "inspect_adapter", stand_in_adapter)
        tok = cfg.tokenizer_model or cfg.tokenizer_name_or_path
        if stand_in or (tok and not Path(tok).exists()):  # a stood-in model's tokenizer is stood in too
            m.setattr(options, "_tokenizer", lambda cfg, info: _StandInTokenizer())
        prepared = options.prepare(cfg, world_size=world)
    assert prepared.dims.world_size == world


def validate_torchrun(cmd: Command, ws: Path) -> None:
    if GENERATE in cmd.argv:
        k = cmd.argv.index(GENERATE)
        world, _ = torchrun_launch([*cmd.argv[:k], "moetrain.pretrain"])
        validate_generate(map_paths(cmd.argv[k + 1:]), world, ws)
        return
    world, args = torchrun_launch(cmd.argv)
    validate_launch(map_paths(args), world, ws)


def validate_generate_here(cmd: Command, ws: Path) -> None:
    """``python tools/generate.py ARGS`` / ``python -m moetrain.inference.generate ARGS``: 1 process."""
    start = 3 if cmd.argv[1] == "-m" else 2
    validate_generate(map_paths(cmd.argv[start:]), 1, ws)


def validate_recipe(cmd: Command, ws: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=ws))
    flags, launcher = _recorded_launch(Path(cmd.argv[1]), tmp)
    world = int(launcher["--nproc-per-node"]) * int(launcher["--nnodes"])
    if Path(cmd.argv[1]).name.startswith("generate_"):
        validate_generate([*flags, *cmd.argv[2:]], world, ws)
        return
    validate_launch([*flags, *cmd.argv[2:]], world, ws)  # extra flags are appended ("$@") and win


def validate_benchmark_run(cmd: Command, ws: Path) -> None:
    check_flags(cmd.argv[1], cmd.argv[2:])
    inner = Command(cmd.doc, cmd.line, option(cmd.argv, "--run"), "--run")
    kind, check = classify(inner)
    assert kind == "validated", f"--run {inner.text!r} is {kind}, not a launch this test can validate"
    check(inner, ws)


def validate_help(cmd: Command, ws: Path) -> None:
    """A benchmark (minutes of work): it must import and take its command line (here: --help)."""
    rc, out, err = run_script(cmd.argv[1], [*cmd.argv[2:], "--help"], ws)
    assert rc == 0 and out.strip(), f"{cmd.argv[1]} --help: exit status {rc}: {err}"


# The checkpoint each family's conversion commands are about (the released model).
RELEASED_FLAVOR = {"grok1": "grok1-314b", "llama2": "llama2-7b", "llama3": "llama3-8b", "mixtral": "mixtral-8x7b"}


def validate_convert(cmd: Command, ws: Path) -> None:
    """convert_ckpt.py's command line and options, and the target layout against the released model
    (the checkpoint itself is not read)."""
    import moetrain.checkpoint_formats.convert as convert
    from moetrain.checkpoint_formats.options import ConvertReport
    from moetrain.models.registry import get_flavor

    def check_only(opts):
        if opts.save_model_type == "mg":
            cfg = get_flavor(opts.model or RELEASED_FLAVOR[opts.model_type_hf])
            convert.check_model_type(cfg, opts.model_type_hf)
            convert.target_layout(cfg, opts)
        return ConvertReport(f"{opts.load_model_type} -> {opts.save_model_type} (checked, not run)")

    with pytest.MonkeyPatch.context() as m:
        m.setattr(convert, "convert", check_only)
        run_tool(cmd, ws)


def check_pip(cmd: Command, ws: Path) -> None:
    args = cmd.argv[1:]
    assert args and args[0] == "install", "only pip install is documented"
    pyproject = (REPO / "pyproject.toml").read_text()
    section = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^([\w-]+)\s*=", section, re.M))
    wanted, k = [], 1
    while k < len(args):
        if args[k] in ("-c", "-r"):
            assert (REPO / args[k + 1]).is_file(), f"{args[k]} {args[k + 1]}: no such file"
            k += 2
            continue
        if args[k] == "-e":
            k += 1
        if not args[k].startswith("-"):
            wanted.append(args[k])
        k += 1
    assert wanted, "installs nothing (pip install needs a requirement, e.g. -e .)"
    for req in wanted:
        m = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", req)
        if m and m.group(1):
            missing = set(m.group(1).split(",")) - extras
            assert not missing, f"pyproject.toml has no extra {', '.join(sorted(missing))}"


Check = Callable[[Command, Path], object]


def classify(cmd: Command) -> tuple[str, Check]:
    """(ran | validated | template | make-target, the check), or Unclassified."""
    if cmd.tokens is None:
        raise Unclassified("not valid shell (unbalanced quotes)")
    argv = cmd.argv
    if not argv:
        raise Unclassified("only variable assignments, no command")
    if argv[0] == "make":
        return "make-target", check_make
    if cmd.env:
        raise Unclassified("variables before the command: no shape here models them")
    if "/" in argv[0] and argv[0].endswith((".py", ".sh")):
        runner = "python" if argv[0].endswith(".py") else "bash"
        raise Unclassified(f"runs {argv[0]} itself (Permission denied unless it is executable, and then "
                           f"whichever python is first on PATH): write `{runner} {argv[0]} ...`")
    if any(PLACEHOLDER.search(t) or t == "..." for t in argv):
        return "template", check_template
    name, rest = Path(argv[0]).name, argv[2:]
    if name in ("python", "python3") and argv[1:3] == ["-m", GENERATE]:
        return "validated", validate_generate_here
    if name in ("python", "python3"):
        script = argv[1] if len(argv) > 1 else ""
        if not (REPO / script).is_file():
            raise Unclassified(f"{script!r} is not a script of the repository")
        if "--help" in rest or "-h" in rest:
            return "ran", run_help
        ran = {"tools/plan.py": run_plan, "tools/preprocess_data.py": run_preprocess,
               "tools/merge_datasets.py": run_merge}
        if script in ran:
            return "ran", ran[script]
        if script == "tools/benchmark.py":
            return ("validated", validate_benchmark_run) if option(argv, "--run") else ("ran", run_benchmark)
        if script == "ckpt_converters/convert_ckpt.py":
            return "validated", validate_convert
        if script == "tools/generate.py":
            return "validated", validate_generate_here
        if re.fullmatch(r"tools/bench_\w+\.py", script) and not rest:
            return "validated", validate_help
        raise Unclassified(f"no shape for python {script} with these arguments")
    if name == "torchrun":
        return "validated", validate_torchrun
    if name in ("bash", "sh") and len(argv) > 1 and re.fullmatch(r"examples/\w+/(pretrain|tune|generate)_\w+\.sh", argv[1]):
        return "validated", validate_recipe
    if name == "pip":
        return "validated", check_pip
    raise Unclassified(f"no shape for {argv[0]}")


# ---------------------------------------------------------------------------------------------- tests


def test_every_command_is_classified():
    counts, problems = Counter(), []
    for doc in DOC_FILES:
        for cmd in extract(doc):
            try:
                counts[classify(cmd)[0]] += 1
            except Unclassified as e:
                problems.append(f"{cmd.id} ({cmd.where}): `{cmd.text}`\n    {e}")
    print("documented commands:", dict(counts))
    assert not problems, ("documented commands that neither run nor validate here; write them so they do, "
                          "or teach tests/test_documented_commands.py their shape:\n" + "\n".join(problems))
    for doc in ("README.md", "docs/preprocess.md", "docs/training.md", "docs/planner.md"):
        assert extract(doc), f"no commands found in {doc}: has the extraction broken?"


@pytest.mark.parametrize("doc", DOC_FILES)
def test_documented_commands(doc, tmp_path):
    """The doc's commands in order, in one scratch directory, as a reader following it would."""
    ws = tmp_path / "work"
    populate(ws)
    failures, skipped = [], []
    for cmd in extract(doc):
        try:
            kind, check = classify(cmd)
        except Unclassified:
            continue  # reported by test_every_command_is_classified
        try:
            output = check(cmd, ws)
            if cmd.printed is not None:
                assert kind == "ran" and output is not None, f"{kind}: its printed output cannot be checked"
                check_printed(cmd, output)
        except NeedsShared as e:
            skipped.append(f"{cmd.id}: {e}")
        except Exception as e:  # every failing command of the doc in one report
            failures.append(f"{cmd.id} [{kind}]: {cmd.text}\n    {type(e).__name__}: {e}")
    assert not failures, f"{len(failures)} command(s) in {doc} fail:\n" + "\n".join(failures)
    if skipped:
        pytest.skip("sample data absent; not run: " + "; ".join(skipped))


def test_printed_outputs_are_checked():
    """The printed outputs compared in test_documented_commands (a parser change must not drop them)."""
    printed = Counter(c.doc for doc in DOC_FILES for c in extract(doc) if c.printed is not None)
    assert printed["docs/planner.md"] >= 2 and printed["docs/benchmarking.md"] >= 1, dict(printed)


@pytest.mark.shared_data
def test_preprocess_then_train(tmp_path):
    """docs/preprocess.md's first command on the c4 sample (300 documents, Grok-1's tokenizer), then
    docs/training.md's launch on that dataset: the real data, split and tokenizer checks pass."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    prefix = c4_dataset()
    if prefix is None:
        pytest.skip(f"c4 sample or Grok-1 tokenizer absent ({C4}, {GROK})")
    assert len(IndexedDataset(prefix)) == 300
    train = next(c for c in extract("docs/training.md") if c.argv[:1] == ["torchrun"])
    world, args = torchrun_launch(train.argv)
    args = map_paths(args)
    assert option(args, "--data-path") == prefix and option(args, "--split"), \
        f"{train.id}: expected --data-path demo_out/data/demo_text_document and a --split for small corpora"
    run, stood_in = validate_launch(args, world, tmp_path)
    assert stood_in == [] and run.tokenizer.vocab_size == 131072
    # Without --split, the default (969,30,1) leaves the test split of 300 documents empty.
    k = args.index("--split")
    with pytest.raises(ConfigError, match=r"--split.*empty"):
        validate_launch(args[:k] + args[k + 2:], world, tmp_path)


def test_benchmarks_md_planner_figures(tmp_path):
    """docs/benchmarks.md's planner row and memory bullet are what its plan.py command prints now."""
    cmd = next(c for c in extract("docs/benchmarks.md") if c.argv[1:2] == ["tools/plan.py"])
    rc, out, err = run_script(cmd.argv[1], [*cmd.argv[2:], "--json", "plan.json"], tmp_path)
    assert rc == 0, err
    plan = json.loads((tmp_path / "plan.json").read_text())
    s0, world = plan["stages"][0], plan["layout"]["world_size"]
    tflops = plan["flops_per_step"] / plan["step_seconds"] / world / 1e12
    expected = [
        f"| {plan['tokens_per_sec_per_device']:.0f} | {plan['step_seconds']:.1f} | {tflops:.1f} |",
        f"{plan['peak_memory_gib']:.1f} GiB predicted",
        f"weights {s0['weights_gib']:.1f} + gradients {s0['gradients_gib']:.1f} + optimizer "
        f"{s0['optimizer_gib']:.1f} + activations {s0['activations_gib']:.1f}",
        f"+ {s0['reserved_gib']:.1f} reserved = {s0['total_gib']:.1f} GiB",
        f"per rank {s0['params_total'] / 1e9:.2f}B ({s0['params_dense'] / 1e9:.2f}B dense + "
        f"{s0['params_expert'] / 1e9:.2f}B expert",
    ]
    text = " ".join((REPO / "docs/benchmarks.md").read_text().split())
    missing = [e for e in expected if e not in text]
    assert not missing, (f"docs/benchmarks.md ('Planner prediction') is stale; the plan of {cmd.id} gives:\n"
                         + "\n".join(missing) + "\n\n" + out)


def test_planner_md_quoted_messages(tmp_path):
    """The messages docs/planner.md quotes are what the planner prints (re-paste them when it changes)."""
    prose = re.sub(r"^\s*(```|~~~).*$", "", (REPO / "docs/planner.md").read_text(), flags=re.M)
    quotes = re.findall(r"`([^`]+)`", " ".join(prose.split()))
    cases = [  # (arguments, a word of the quote in docs/planner.md that this run must print)
        (["--model", "grok1-tiny", "--tp", "3", "--gbs", "8"], "world size"),
        (["--model", "grok1-40b", "--tp", "4", "--gbs", "8"], "requires --sequence-parallel"),
        (["--model", "grok1-40b", "--tp", "2", "--nnodes", "2", "--gbs", "128", "--seq", "8192", "--device",
          "910b4", "--sequence-parallel", "--bf16"], "no layout of"),
    ]
    problems = []
    for args, key in cases:
        quoted = next((q for q in quotes if key in q), None)
        _, out, err = run_script("tools/plan.py", args, tmp_path)
        if quoted is None or quoted not in out + err:
            problems.append(f"docs/planner.md quotes {quoted!r}; tools/plan.py {' '.join(args)} prints:\n{out}{err}")
    assert not problems, "\n".join(problems)
