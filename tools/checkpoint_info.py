#!/usr/bin/env python
"""What a moetrain checkpoint holds, and whether it is intact.

    python tools/checkpoint_info.py ./ckpt/grok1-40b          # every kept iteration, the pointer's marked
    python tools/checkpoint_info.py ./ckpt/grok1-40b/iter_0000100

Prints the iteration, model, layout, consumed samples, LoRA adapters (if any), each file with its
size, and the integrity status: every file against the size and CRC-32 recorded at save
(moetrain/training/checkpoint_integrity.py). Exit status 1 when a checkpoint shown is damaged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moetrain.checkpoint_formats.directory import META_FILE, iter_dir_name, read_latest  # noqa: E402
from moetrain.training.checkpoint_integrity import damage, kept_iterations  # noqa: E402


def describe(ckpt: Path, is_latest: bool) -> tuple[list[str], bool]:
    """(lines, intact) for one iter_* directory."""
    problem = damage(ckpt)
    lines = [f"{ckpt}{'  (latest)' if is_latest else ''}: {'DAMAGED: ' + problem if problem else 'intact'}"]
    try:
        meta = json.loads((ckpt / META_FILE).read_text())
    except (OSError, ValueError):
        return lines, False
    model = meta.get("model_config", {})
    layout = meta.get("layout") or {}
    shown = ", ".join(f"{k} {v}" for k, v in layout.items() if v not in (None, False)) or "not recorded"
    lines += [f"  iteration {meta.get('iteration')}, consumed samples {meta.get('consumed_train_samples')}",
              f"  model {model.get('name')} (family {model.get('family')}, {model.get('num_layers')} layers, hidden "
              f"{model.get('hidden_size')}, experts {model.get('num_experts') or 0})",
              f"  layout {shown}; optimizer state {'saved' if meta.get('has_optimizer', True) else 'not saved'}"]
    lora = meta.get("lora")
    if lora:
        lines.append(f"  LoRA adapters only: r {lora.get('lora_r')} alpha {lora.get('lora_alpha')} on "
                     f"{' '.join(lora.get('lora_target_modules', []))}")
    files = meta.get("files")
    if files is None:
        lines.append("  files: no integrity record (written before moetrain recorded one)")
    else:
        total = sum(f["size"] for f in files.values())
        lines.append(f"  {len(files)} files, {total:,} bytes:")
        lines += [f"    {name:<40} {rec['size']:>14,}  crc32 {rec['crc32']:08x}" for name, rec in files.items()]
    return lines, problem is None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", type=Path, help="a --save directory, or one iter_* directory of it")
    args = p.parse_args(argv)
    path = args.path
    if (path / META_FILE).is_file() or path.name.startswith("iter_"):
        shown = [(path, False)]
    else:
        latest = read_latest(path)
        if latest is None:
            print(f"checkpoint_info.py: {path}: no checkpoint (no pointer file, no {META_FILE})", file=sys.stderr)
            return 2
        shown = [(path / iter_dir_name(i), i == latest) for i in kept_iterations(path, latest)]
    intact = True
    for ckpt, is_latest in shown:
        lines, ok = describe(ckpt, is_latest)
        intact &= ok
        print("\n".join(lines))
    return 0 if intact else 1


if __name__ == "__main__":
    sys.exit(main())
