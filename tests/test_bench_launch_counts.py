"""The launch counter of ``benchmarks/bench_launch_counts.py``: one of our custom ops costs what runs inside it."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_launch_counts import Counts  # noqa: E402

from sswp_fast.kernels import _common  # noqa: E402
from sswp_fast.kernels.sampled_pool import sampled_pool, sampled_pool_reference  # noqa: E402


def test_one_of_our_ops_costs_the_launches_inside_it_not_one_more(monkeypatch) -> None:
    """On its PyTorch kernel, ``sswp_fast::sampled_pool`` costs exactly what that kernel launches when run
    directly; the op itself adds nothing (the counter's outer mode is off inside an op)."""
    x, pool = torch.randn(2, 6, 5, 5), torch.tensor([0, 1, -1])
    with Counts() as direct:
        sampled_pool_reference(x, pool, 1)
    monkeypatch.setattr(_common, "INTERPRETED", False)
    with Counts() as op:
        sampled_pool(x, pool, 1)
    assert direct.compute > 2
    assert op.compute == direct.compute  # (bytes differ: below autograd, max_pool2d keeps no indices)
    assert op.ops["sswp_fast.sampled_pool"] == 1
