"""The model layer: families own their family, and models/ knows neither the trainer nor the device."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from moetrain.models import FAMILIES, FLAVORS, family_of, get_flavor
from moetrain.models.registry import converter_model_types, family_for_model_type

PACKAGE = Path(__file__).resolve().parents[1] / "moetrain"


def test_every_family_folder_is_registered_with_its_flavors():
    folders = {p.parent.name for p in (PACKAGE / "models").glob("*/family.py")}
    assert folders == set(FAMILIES) == {"grok1", "llama"}
    for name, cfg in FLAVORS.items():
        assert family_of(cfg).name == cfg.family and cfg in family_of(cfg).flavors, name
    for family in FAMILIES.values():
        for f in ("flavors.py", "hf_config.py", "weight_map.py", "family.py"):
            assert (PACKAGE / "models" / family.name / f).is_file(), (family.name, f)


def test_unknown_family_is_a_clear_error():
    with pytest.raises(ValueError, match="family must be one of"):
        get_flavor("llama-tiny", family="gpt2")


def test_converter_model_types_belong_to_one_family():
    assert converter_model_types() == ("grok1", "llama2", "llama3", "mixtral")
    assert family_for_model_type("mixtral").name == "llama" and family_for_model_type("grok1").name == "grok1"
    with pytest.raises(ValueError, match="--model-type-hf must be one of"):
        family_for_model_type("gpt2")


def test_no_family_branches_outside_the_registry():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if path.name != "registry.py" and re.search(r"family\s*[!=]=", text):
            offenders.append(str(path.relative_to(PACKAGE)))
    assert not offenders, f"branch on the model family outside moetrain/models/registry.py: {offenders}"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_models_know_neither_the_trainer_nor_the_device():
    for path in (PACKAGE / "models").rglob("*.py"):
        bad = {m for m in _imports(path) if m.startswith(("moetrain.training", "moetrain.device", "moetrain.config"))}
        assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"
