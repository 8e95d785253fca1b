"""Rank side of tests/test_convert_trains.py: train from a converted checkpoint, then save."""

from __future__ import annotations


def train_from_converted(rank, world, args):
    from moetrain.pretrain import run_pretrain

    summary = run_pretrain(args)
    return [summary.losses[i] for i in sorted(summary.losses)]
