"""Every megatron-core workaround outside the CPU redirections, listed in one table.

moetrain/device/cpu_redirects.py's ``REDIRECTS`` make megatron-core run on a CPU with gloo (applied
by the CPU backend only). Every other replacement of a megatron-core attribute is a ``Patch`` in
``PATCHES`` below: the upstream target, what replaces it, why, and the upstream signature and names
it relies on; the code of each replacement is here too, and is applied only through ``apply``.
Workarounds that replace nothing upstream but lean on its internals are listed in ``WORKAROUNDS``.
``tests/test_megatron_patches.py`` fails if an upgrade of megatron-core removes a target, changes a
signature or drops a name a workaround relies on (so it is revisited, not silently wrong), and if a
module under moetrain/ outside moetrain/device/ and this file assigns to a megatron attribute.

``relies_on`` entries are ``"module:Qual.name"`` (must exist upstream) or
``"module:Qual.function -> name"`` (that function's code must still refer to ``name``: the call or
attribute the workaround hooks into).

Applying a patch is idempotent and process-wide: the replacement keeps the upstream object as
``_moetrain_original``, so a second ``apply`` is a no-op and the checks see the upstream signature
even after patching.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

ORIGINAL_ATTR = "_moetrain_original"


@dataclass(frozen=True)
class Patch:
    """One replacement of a megatron-core attribute."""

    name: str  # what callers pass to ``apply``
    target: str  # "module:attribute" or "module:Class.attribute" replaced upstream
    what: str  # what replaces it
    why: str
    parameters: tuple[str, ...]  # the upstream callable's parameters, which the replacement mirrors
    relies_on: tuple[str, ...]  # other upstream names / uses it depends on (see the module docstring)
    make: Callable[[Callable], Callable]  # upstream object -> replacement


@dataclass(frozen=True)
class Workaround:
    """A megatron-core bug worked around without replacing anything upstream."""

    where: str  # moetrain function that does it
    why: str
    relies_on: tuple[str, ...]


# ---------------------------------------------------------------- the replacements
def _rotary_through_kernel_table(upstream: Callable) -> Callable:
    """SelfAttention's rotary embedding via the kernel table for the plain case moetrain uses
    (rotate-half RoPE on [s, b, heads, head_dim], no packed sequences, no mscale); every other case
    goes to the upstream function."""
    from moetrain.kernels import get_kernels

    def apply_rotary_pos_emb(t, freqs, config, cu_seqlens=None, mscale=1.0, cp_group=None):
        if cu_seqlens is None and mscale == 1.0 and not config.rotary_interleaved:
            return get_kernels().rotary(t, freqs)
        return upstream(t, freqs, config, cu_seqlens=cu_seqlens, mscale=mscale, cp_group=cp_group)

    return apply_rotary_pos_emb


def _state_copy_without_step(original: Callable) -> Callable:
    """``_set_main_param_and_optimizer_states`` with torch Adam's ``step`` hidden during the copy
    (a no-op for states without ``step``, and for checkpoint tensors that carry it)."""

    def set_states(self, model_param, tensors):
        if "step" in tensors or self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            return original(self, model_param, tensors)
        group_index, group_order = self.model_param_group_index_map[model_param]
        state = self.optimizer.state[self.optimizer.param_groups[group_index]["params"][group_order]]
        step = state.pop("step", None)
        try:
            original(self, model_param, tensors)
        finally:
            if step is not None:
                state["step"] = step

    return set_states


PATCHES: tuple[Patch, ...] = (
    Patch(
        name="rotary-kernel",
        target="megatron.core.transformer.attention:apply_rotary_pos_emb",
        what="a wrapper that computes plain rotate-half RoPE with the kernel table's ``rotary`` "
             "(npu_rotary_mul on Ascend) and forwards every other case to the upstream function",
        why="route megatron-core's rotary embedding through moetrain's kernel table "
            "(installed by models/common/rope.py when a model is built)",
        parameters=("t", "freqs", "config", "cu_seqlens", "mscale", "cp_group"),
        relies_on=(
            # SelfAttention calls the name through attention.py's module global, which is what is replaced
            "megatron.core.transformer.attention:Attention.forward -> apply_rotary_pos_emb",
            "megatron.core.transformer.transformer_config:TransformerConfig.rotary_interleaved",
        ),
        make=_rotary_through_kernel_table,
    ),
    Patch(
        name="distrib-optimizer-state-copy-without-step",
        target="megatron.core.optimizer.distrib_optimizer:DistributedOptimizer._set_main_param_and_optimizer_states",
        what="the upstream method with the param's Adam ``step`` popped during the copy and put back after",
        why="megatron-core 0.16 bug without Apex / TE (torch Adam): loading a fully_reshardable "
            "distributed-optimizer state copies every key of the param's Adam state, including "
            "``step``, which the checkpoint tensors do not carry (step is restored separately) -> "
            "KeyError (applied by training/checkpointing.py before loading optimizer state)",
        parameters=("self", "model_param", "tensors"),
        relies_on=(
            "megatron.core.optimizer.distrib_optimizer:"
            "DistributedOptimizer.load_parameter_state_from_fully_reshardable -> _set_main_param_and_optimizer_states",
            "megatron.core.optimizer.distrib_optimizer:DistributedOptimizer.__init__ -> model_param_group_index_map",
            "megatron.core.optimizer.optimizer_config:"
            "OptimizerConfig.__post_init__ -> use_precision_aware_optimizer_no_fp8_or_ds_fp8",
        ),
        make=_state_copy_without_step,
    ),
)

WORKAROUNDS: tuple[Workaround, ...] = (
    Workaround(
        where="moetrain.training.checkpointing:_init_empty_optimizer_states",
        why="a fresh DistributedOptimizer has no Adam state and its sharded_state_dict (needed to load "
            "one) asserts on the missing ``step`` without Apex / TE: create the states first",
        relies_on=("megatron.core.optimizer.distrib_optimizer:"
                   "DistributedOptimizer._init_optimizer_states_with_dummy_values",),
    ),
    Workaround(
        where="moetrain.training.checkpointing:_unshare_adam_steps",
        why="megatron-core 0.16 without Apex / TE gives every param of a DistributedOptimizer the same "
            "``step`` tensor on load; torch Adam increments it in place once per param",
        relies_on=("megatron.core.optimizer.distrib_optimizer:DistributedOptimizer",),
    ),
)


# ---------------------------------------------------------------- resolving and applying
def resolve(target: str) -> tuple[object, str]:
    """(owner, attribute) of ``"module:Qual.attribute"``: the module or class that holds it."""
    module_name, _, qual = target.partition(":")
    *path, attr = qual.split(".")
    owner = importlib.import_module(module_name)
    for part in path:
        owner = getattr(owner, part)
    return owner, attr


def original(patch: Patch):
    """The upstream object a patch replaces (also after ``apply``)."""
    owner, attr = resolve(patch.target)
    current = getattr(owner, attr)
    return getattr(current, ORIGINAL_ATTR, current)


def _code_names(fn) -> set[str]:
    """Global and attribute names referred to by a function's code (nested code included)."""
    names: set[str] = set()
    stack = [inspect.unwrap(fn).__code__]
    while stack:
        code = stack.pop()
        names.update(code.co_names)
        stack.extend(c for c in code.co_consts if inspect.iscode(c))
    return names


def _reliance_problem(spec: str) -> str | None:
    where, _, used = spec.partition(" -> ")
    try:
        owner, attr = resolve(where)
        obj = getattr(owner, attr)
    except (ImportError, AttributeError):
        return f"{where} no longer exists"
    if used and used not in _code_names(obj):
        return f"{where} no longer refers to {used!r}"
    return None


def problems() -> list[str]:
    """What an upstream upgrade broke for the listed patches and workarounds (empty when all is well)."""
    out = []
    for patch in PATCHES:
        try:
            upstream = original(patch)
        except (ImportError, AttributeError):
            out.append(f"{patch.name}: {patch.target} no longer exists")
            continue
        params = tuple(inspect.signature(upstream).parameters)
        if params != patch.parameters:
            out.append(f"{patch.name}: {patch.target} now takes {params}, the patch mirrors {patch.parameters}")
        out.extend(f"{patch.name}: {p}" for p in map(_reliance_problem, patch.relies_on) if p)
    for w in WORKAROUNDS:
        out.extend(f"{w.where}: {p}" for p in map(_reliance_problem, w.relies_on) if p)
    return out


def get(name: str) -> Patch:
    for patch in PATCHES:
        if patch.name == name:
            return patch
    raise KeyError(f"no megatron-core patch named {name!r} (known: {', '.join(p.name for p in PATCHES)})")


def is_applied(name: str) -> bool:
    owner, attr = resolve(get(name).target)
    return hasattr(getattr(owner, attr), ORIGINAL_ATTR)


def apply(name: str) -> None:
    """Replace the patch's target upstream (process-wide; once: a second call is a no-op)."""
    patch = get(name)
    owner, attr = resolve(patch.target)
    upstream = getattr(owner, attr)
    if hasattr(upstream, ORIGINAL_ATTR):
        return
    replacement = patch.make(upstream)
    setattr(replacement, ORIGINAL_ATTR, upstream)
    setattr(owner, attr, replacement)
