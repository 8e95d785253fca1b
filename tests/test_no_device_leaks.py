"""Only moetrain/device/ knows about cuda / npu: no ``torch.cuda.*`` and no torch_npu elsewhere.

Scans the source of moetrain/, tools/ and ckpt_converters/ with ``ast`` (so comments and
docstrings that mention torch.cuda are fine) and reports file:line of every offender.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("moetrain", "tools", "ckpt_converters")
ALLOWED = ROOT / "moetrain" / "device"


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _is_npu_module(name: str | None) -> bool:
    return bool(name) and (name == "torch_npu" or name.startswith("torch_npu."))


def offenders_in(source: str, label: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            # torch.cuda.X, and torch.cuda passed around as an object
            if dotted == "torch.cuda" or (dotted or "").startswith("torch.cuda."):
                found.append(f"{label}:{line}: {dotted}")
        elif isinstance(node, ast.Import):
            found += [f"{label}:{line}: import {a.name}" for a in node.names
                      if _is_npu_module(a.name) or a.name.startswith("torch.cuda")]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if _is_npu_module(module) or module.startswith("torch.cuda") or (
                    module == "torch" and any(a.name == "cuda" for a in node.names)):
                found.append(f"{label}:{line}: from {module} import ...")
        elif isinstance(node, ast.Call) and _dotted(node.func) in ("importlib.import_module", "import_module",
                                                                  "__import__", "importlib.util.find_spec"):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _is_npu_module(arg.value):
                found.append(f"{label}:{line}: {_dotted(node.func)}({arg.value!r})")
    # ast.walk visits torch.cuda.X.Y's inner nodes too: keep one report per line
    return sorted(set(found), key=lambda s: (s.split(":")[0], int(s.split(":")[1])))


def _sources():
    for top in SCANNED:
        base = ROOT / top
        if not base.exists():
            continue
        for path in sorted(base.rglob("*.py")):
            if ALLOWED in path.parents or ".venv" in path.parts:
                continue
            yield path


def test_scanner_finds_each_kind_of_leak():
    source = (
        "import torch\nimport torch_npu\nfrom torch_npu.contrib import transfer_to_npu\n"
        "x = torch.cuda.current_device()\n"
        "from torch import cuda\nimport importlib\nm = importlib.import_module('torch_npu')\n"
        "'''torch.cuda.synchronize() in a docstring is fine'''\n# torch.cuda.foo() in a comment is fine\n"
        "y = torch.cuda\n"
    )
    lines = [int(s.split(":")[1]) for s in offenders_in(source, "f.py")]
    assert sorted(set(lines)) == [2, 3, 4, 5, 7, 10]


def test_no_device_code_outside_moetrain_device():
    files = list(_sources())
    assert any(p.name == "parallel.py" for p in files)  # the scan really covers moetrain/
    offenders = [o for path in files for o in offenders_in(path.read_text(), str(path.relative_to(ROOT)))]
    assert offenders == [], "device-specific code outside moetrain/device/:\n" + "\n".join(offenders)
