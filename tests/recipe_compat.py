"""Run a ModelLink / MindSpeed-LLM / Megatron-LM recipe (tests/data/recipes/, verbatim) with its
entry point swapped: ``torchrun`` is a stub on PATH that records its command line, the recipe's
``pretrain_gpt.py`` / ``posttrain_gpt.py`` becomes ``-m moetrain.pretrain`` (SFT when the flags
say --is-instruction-dataset, as ModelLink's posttrain_gpt.py). Returns (world size, flags)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

RECIPES = Path(__file__).resolve().parent / "data" / "recipes"
ENTRY_POINTS = ("pretrain_gpt.py", "posttrain_gpt.py", "pretrain_mixtral.py")

_STUB = """import json, os, sys
with open(os.environ["RECORD"], "w") as f:
    json.dump(sys.argv[1:], f)
"""


# Positional arguments of Megatron-LM's scripts (checkpoint, tokenizer, data); ModelLink's set variables.
POSITIONAL = {"megatron_lm_train_mixtral_8x7b_distributed.sh": ["ckpt", "tokenizer.model", "data/corpus"]}
# The Megatron-LM Mixtral script takes its node count from SLURM (EP8 x PP4 needs 4 nodes of 8).
ENV = {"megatron_lm_train_mixtral_8x7b_distributed.sh": {"SLURM_NNODES": "4"}}


def recorded_launch(recipe: Path, tmp: Path, paths: dict[str, str] | None = None,
                    positional: list[str] | None = None) -> tuple[int, list[str]]:
    """``paths``: placeholder text -> path (``{"data path": "/data/corpus"}`` fills ``"your data path"``);
    ``positional``: a Megatron-LM script's arguments (default: stand-ins)."""
    (tmp / "bin").mkdir(parents=True, exist_ok=True)
    (tmp / "logs").mkdir(exist_ok=True)  # ModelLink's recipes tee into logs/
    for entry in ENTRY_POINTS:  # Megatron-LM's scripts check that their entry point exists
        (tmp / entry).touch()
    stub = tmp / "torchrun_stub.py"
    stub.write_text(_STUB)
    torchrun = tmp / "bin" / "torchrun"
    torchrun.write_text(f"#!/bin/sh\nexec {sys.executable} {stub} \"$@\"\n")
    torchrun.chmod(0o755)
    record = tmp / "argv.json"
    env = {**os.environ, "PATH": f"{tmp / 'bin'}:{os.environ['PATH']}", "RECORD": str(record),
           **ENV.get(recipe.name, {})}
    # What a user edits: the recipe's placeholder paths ("your data path") become paths.
    script = tmp / recipe.name
    paths = paths or {}
    script.write_text(re.sub(r'"your ([^"]*)"',
                             lambda m: '"' + paths.get(m.group(1), "./" + m.group(1).replace(" ", "_")) + '"',
                             recipe.read_text()))
    args = positional if positional is not None else POSITIONAL.get(recipe.name, [])
    subprocess.run(["bash", str(script), *args], cwd=tmp, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    argv = json.loads(record.read_text())
    k = next(i for i, a in enumerate(argv) if Path(a).name in ENTRY_POINTS)
    launcher, flags = argv[:k], argv[k + 1:]
    opts = {}
    for i, a in enumerate(launcher):
        if a.startswith("--"):
            key = a.replace("_", "-").split("=")[0]
            opts[key] = a.split("=", 1)[1] if "=" in a else launcher[i + 1]
    world = int(opts.get("--nproc-per-node", 1)) * int(opts.get("--nnodes", 1))
    return world, flags
