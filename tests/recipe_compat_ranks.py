"""Rank side of tests/test_recipe_compat.py: recipes' own flags (reduced in size by overrides
given after them) trained for a few iterations."""

from __future__ import annotations


def train_recipes(rank, world, runs: dict[str, list[str]]) -> dict[str, dict[int, float]]:
    from sft_training_ranks import _allow_children

    from moetrain.pretrain import run_pretrain

    _allow_children()
    return {name: dict(run_pretrain(flags).losses) for name, flags in runs.items()}
