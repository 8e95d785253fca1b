"""The tested set of versions: requirements/lock.txt pins every dependency pyproject.toml names,
inside pyproject's ranges, and `make install` installs with it (so CI installs what was tested)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")

ROOT = Path(__file__).resolve().parents[1]


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    return reqs + [Requirement(r) for r in project["optional-dependencies"]["dev"]]


def test_lock_pins_every_dependency_within_its_range():
    pins = _lock()
    for req in _requirements():
        name = canonicalize_name(req.name)
        if name == "torch":  # chosen by the Makefile's TORCH_SPEC
            assert "torch" not in pins
            continue
        assert name in pins, f"requirements/lock.txt does not pin {req.name}; run make lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"lock pins {req.name}=={pins[name]} outside pyproject's {req.specifier}")


def test_installed_environment_is_the_locked_one():
    # The suite runs in what `make install` built: every pinned package is installed at its pin.
    wrong = {}
    for name, version in _lock().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    assert not wrong, f"installed versions differ from requirements/lock.txt (pinned, installed): {wrong}"


def test_make_install_uses_the_lock_and_reinstalls_on_a_new_torch_spec():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install --quiet -c \$\(LOCK\) -e \"\.\[dev\]\"", makefile)
    assert "$(STAMP): pyproject.toml $(LOCK) $(TORCH_CHOICE)" in makefile
    assert "uninstall --quiet -y torch" in makefile
