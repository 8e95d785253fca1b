"""moetrain.testing.spawn.run_on_ranks: results in rank order, failures and hangs surface clearly."""

from __future__ import annotations

import time

import pytest
import torch
from device_ranks import fail_on_rank, hang_on_rank, return_values  # tests/ is on sys.path under pytest

from moetrain.testing.spawn import RankFailure, run_on_ranks

pytestmark = pytest.mark.multirank


def test_return_values_in_rank_order_including_tensors():
    results = run_on_ranks(3, return_values, args=(10,), timeout=120)
    assert [r["rank"] for r in results] == [0, 1, 2]
    assert all(r["world"] == 3 for r in results)
    for rank, r in enumerate(results):
        assert isinstance(r["tensor"], torch.Tensor)
        assert torch.equal(r["tensor"], torch.arange(3) * 10 + rank)


def test_failing_rank_traceback_surfaces():
    with pytest.raises(RankFailure) as info:
        run_on_ranks(2, fail_on_rank, args=(1,), timeout=120)
    message = str(info.value)
    assert "rank 1 of 2 failed in fail_on_rank" in message
    assert "ValueError: deliberate failure on rank 1" in message
    assert "Traceback" in message and "device_ranks.py" in message
    assert isinstance(info.value, AssertionError)  # pytest shows it as a plain test failure


def test_hanging_rank_times_out_with_a_clear_message():
    start = time.monotonic()
    with pytest.raises(RankFailure, match=r"timed out after 6 s waiting for rank\(s\) \[1\] of 2 running hang_on_rank"):
        run_on_ranks(2, hang_on_rank, args=(1,), timeout=6)
    assert time.monotonic() - start < 30  # the hung rank is killed, not joined
