"""moetrain/megatron_patches.py: every megatron-core workaround outside the CPU redirections is listed,
and an upgrade of megatron-core that changes what one relies on fails here (not silently in training).

Nothing here applies a real patch to the pytest process: the replacements are built from the upstream
objects and called directly, and ``apply`` is exercised on a stand-in module.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from moetrain import megatron_patches
from moetrain.megatron_patches import PATCHES, Patch

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "moetrain"
# Where assigning to megatron attributes is allowed: the CPU redirections and the patch table.
EXEMPT = (PACKAGE / "device", PACKAGE / "megatron_patches.py")


def test_nothing_a_patch_relies_on_changed_upstream():
    problems = megatron_patches.problems()
    assert problems == [], ("megatron-core changed what these workarounds rely on; revisit them in "
                            "moetrain/megatron_patches.py:\n  " + "\n  ".join(problems))


def test_every_patch_is_described():
    names = [p.name for p in PATCHES]
    assert len(set(names)) == len(names)
    assert len({p.target for p in PATCHES}) == len(PATCHES)
    for p in PATCHES:
        assert p.target.startswith("megatron.core.") and ":" in p.target, p.name
        assert p.what and p.why and p.parameters and p.relies_on, p.name
    assert {p.name for p in PATCHES} >= {"rotary-kernel", "distrib-optimizer-state-copy-without-step"}
    for w in megatron_patches.WORKAROUNDS:
        assert w.why and w.relies_on, w.where
        module, _, name = w.where.partition(":")
        assert hasattr(__import__(module, fromlist=[name]), name), w.where


def _fake(**changes) -> Patch:
    base = dict(name="fake", target="megatron.core.optimizer.distrib_optimizer:DistributedOptimizer."
                                     "_set_main_param_and_optimizer_states",
                what="-", why="-", parameters=("self", "model_param", "tensors"), relies_on=(), make=lambda f: f)
    return Patch(**{**base, **changes})


@pytest.mark.parametrize("changes, expected", [
    (dict(target="megatron.core.transformer.attention:no_such_function"), "no longer exists"),
    (dict(target="megatron.core.no_such_module:f"), "no longer exists"),
    (dict(parameters=("self", "model_param")), "now takes ('self', 'model_param', 'tensors')"),
    (dict(relies_on=("megatron.core.transformer.transformer_config:TransformerConfig.no_such_field",)),
     "TransformerConfig.no_such_field no longer exists"),
    (dict(relies_on=("megatron.core.transformer.attention:Attention.forward -> no_such_call",)),
     "Attention.forward no longer refers to 'no_such_call'"),
])
def test_problems_reports_an_upstream_change(monkeypatch, changes, expected):
    monkeypatch.setattr(megatron_patches, "PATCHES", (*PATCHES, _fake(**changes)))
    problems = megatron_patches.problems()
    assert len(problems) == 1 and problems[0].startswith("fake: ") and expected in problems[0], problems


def test_apply_replaces_once_and_keeps_the_original(monkeypatch):
    module = types.ModuleType("megatron_patches_standin")

    class Target:
        def method(self, x):
            return x

    module.Target = Target
    monkeypatch.setitem(sys.modules, module.__name__, module)
    upstream = Target.method
    made = []

    def make(original):
        made.append(original)

        def method(self, x):
            return original(self, x) + 1

        return method

    patch = Patch("standin", f"{module.__name__}:Target.method", "-", "-", ("self", "x"), (), make)
    monkeypatch.setattr(megatron_patches, "PATCHES", (patch,))
    assert not megatron_patches.is_applied("standin")
    megatron_patches.apply("standin")
    megatron_patches.apply("standin")  # idempotent
    assert made == [upstream] and megatron_patches.is_applied("standin")
    assert Target().method(1) == 2
    assert megatron_patches.original(patch) is upstream
    assert megatron_patches.problems() == []  # the signature is checked on the original
    with pytest.raises(KeyError, match="no megatron-core patch named 'nope'"):
        megatron_patches.apply("nope")


# ---------------------------------------------------------------- what each replacement does
def test_rotary_wrapper_routes_the_plain_case_to_the_kernel_table():
    from moetrain.kernels import override_kernels

    calls = []
    upstream = lambda *args, **kwargs: calls.append(("upstream", kwargs)) or "upstream"  # noqa: E731
    plain = SimpleNamespace(rotary_interleaved=False)
    with override_kernels(rotary=lambda t, freqs: "kernel"):
        wrapper = megatron_patches.get("rotary-kernel").make(upstream)
        assert wrapper("t", "f", plain) == "kernel"
        assert wrapper("t", "f", plain, mscale=2.0) == "upstream"
        assert wrapper("t", "f", plain, cu_seqlens="cu") == "upstream"
        assert wrapper("t", "f", SimpleNamespace(rotary_interleaved=True), cp_group="g") == "upstream"
    assert calls[-1] == ("upstream", {"cu_seqlens": None, "mscale": 1.0, "cp_group": "g"})


def test_rotary_kernel_computes_what_upstream_computes():
    from megatron.core.transformer.transformer_config import TransformerConfig

    patch = megatron_patches.get("rotary-kernel")
    upstream = megatron_patches.original(patch)
    config = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4, apply_rope_fusion=False)
    t = torch.randn(5, 2, 4, 8, generator=torch.Generator().manual_seed(0))
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 8, 2, dtype=torch.float32) / 8))
    angles = torch.outer(torch.arange(5, dtype=torch.float32), inv_freq)
    freqs = torch.cat([angles, angles], -1)[:, None, None, :]  # megatron-core's [s, 1, 1, d] layout
    cp_group = object()  # unused on this path; avoids megatron's global context-parallel group
    expected = upstream(t, freqs, config, cp_group=cp_group)
    torch.testing.assert_close(patch.make(upstream)(t, freqs, config, cp_group=cp_group), expected)


def _optimizer_standin():
    main = torch.zeros(3)
    state = {"exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3), "step": torch.tensor(7.0)}
    model_param = torch.zeros(3)
    this = SimpleNamespace(config=SimpleNamespace(use_precision_aware_optimizer_no_fp8_or_ds_fp8=False),
                           model_param_group_index_map={model_param: (0, 0)},
                           optimizer=SimpleNamespace(param_groups=[{"params": [main]}], state={main: state}))
    tensors = {"param": torch.ones(3), "exp_avg": torch.full((3,), 2.0), "exp_avg_sq": torch.full((3,), 3.0)}
    return this, model_param, tensors, main, state


def test_upstream_state_copy_still_needs_step_in_the_checkpoint_tensors():
    upstream = megatron_patches.original(megatron_patches.get("distrib-optimizer-state-copy-without-step"))
    this, model_param, tensors, _, _ = _optimizer_standin()
    with pytest.raises(KeyError, match="step"):  # fixed upstream? then drop the patch
        upstream(this, model_param, tensors)


def test_state_copy_without_step_copies_the_rest_and_keeps_step():
    patch = megatron_patches.get("distrib-optimizer-state-copy-without-step")
    this, model_param, tensors, main, state = _optimizer_standin()
    step = state["step"]
    patch.make(megatron_patches.original(patch))(this, model_param, tensors)
    assert torch.equal(main, tensors["param"]) and torch.equal(state["exp_avg"], tensors["exp_avg"])
    assert torch.equal(state["exp_avg_sq"], tensors["exp_avg_sq"]) and state["step"] is step


# ---------------------------------------------------------------- no unlisted patch elsewhere
def _megatron_names(tree: ast.AST) -> dict[str, str]:
    """Local name -> "module:qualified.prefix" for every name bound to a megatron module or object."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "megatron":
                    names[a.asname] = f"{a.name}:" if a.asname else None
                    if not a.asname:
                        names["megatron"] = "megatron:"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "megatron":
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}:{a.name}"
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func, args = node.value.func, node.value.args
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if (called in ("import_module", "__import__") and args and isinstance(args[0], ast.Constant)
                    and str(args[0].value).split(".")[0] == "megatron"):
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        names[t.id] = f"{args[0].value}:"
    return {k: v for k, v in names.items() if k and v}


def _dotted(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def _assigned_attributes(target: ast.AST) -> list[ast.Attribute]:
    """The attributes an assignment target writes (``a.b =``, ``a.b, c = ``, ``a.b[k] = `` writes a.b)."""
    if isinstance(target, (ast.Tuple, ast.List)):
        return [a for elt in target.elts for a in _assigned_attributes(elt)]
    if isinstance(target, ast.Starred):
        return _assigned_attributes(target.value)
    if isinstance(target, ast.Subscript):
        return _assigned_attributes(target.value)
    return [target] if isinstance(target, ast.Attribute) else []


def megatron_assignments(source: str) -> list[tuple[int, str]]:
    """(line, "module:qual.attr") of every assignment, ``del`` or ``setattr`` / ``delattr`` of an
    attribute of a megatron module, class or function (as far as the names can be followed)."""
    tree = ast.parse(source)
    names = _megatron_names(tree)
    found = []

    def target_of(node: ast.AST, extra: str | None = None) -> str | None:
        dotted = _dotted(node)
        if not dotted or dotted[0] not in names:
            return None
        base = names[dotted[0]]
        rest = [*dotted[1:], *([extra] if extra else [])]
        if base.endswith(":"):  # a module: its first attributes may name submodules
            module = base[:-1]
            while len(rest) > 1 and _is_module(f"{module}.{rest[0]}"):
                module += "." + rest.pop(0)
            return f"{module}:{'.'.join(rest)}"
        return f"{base}.{'.'.join(rest)}" if rest else base

    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        for t in targets:
            for attribute in _assigned_attributes(t):
                where = target_of(attribute)
                if where:
                    found.append((node.lineno, where))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("setattr", "delattr") and node.args):
            attr = node.args[1].value if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) else "?"
            where = target_of(node.args[0], str(attr))
            if where:
                found.append((node.lineno, where))
    return sorted(found)


def test_scanner_finds_the_forms_of_patching():
    source = """
import importlib
import megatron.core.transformer.attention as attention
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
import megatron.core

mod = importlib.import_module("megatron.core.transformer.moe.moe_utils")

def f(config):
    attention.apply_rotary_pos_emb = None
    DistributedOptimizer.step = None
    mod.helper = None
    setattr(DistributedOptimizer, "zero_grad", None)
    del attention.other
    megatron.core.transformer.utils.torch = None
    mod.table["k"], x = None, None
    config.fp16 = True  # an instance of moetrain's own: not a patch
    local = object()
    local.x = 1
"""
    assert megatron_assignments(source) == [
        (10, "megatron.core.transformer.attention:apply_rotary_pos_emb"),
        (11, "megatron.core.optimizer.distrib_optimizer:DistributedOptimizer.step"),
        (12, "megatron.core.transformer.moe.moe_utils:helper"),
        (13, "megatron.core.optimizer.distrib_optimizer:DistributedOptimizer.zero_grad"),
        (14, "megatron.core.transformer.attention:other"),
        (15, "megatron.core.transformer.utils:torch"),
        (16, "megatron.core.transformer.moe.moe_utils:table"),
    ]


def test_no_unlisted_megatron_patch_outside_the_table():
    listed = {p.target for p in megatron_patches.PATCHES}
    unlisted = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if any(path == e or e in path.parents for e in EXEMPT):
            continue
        for line, target in megatron_assignments(path.read_text()):
            if target not in listed:
                unlisted.append(f"{path.relative_to(ROOT)}:{line}: {target}")
    assert unlisted == [], ("these assign to megatron-core attributes; list them in moetrain/megatron_patches.py "
                            "(PATCHES) and apply them from there:\n  " + "\n  ".join(unlisted))
