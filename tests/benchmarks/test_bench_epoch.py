"""The floor counts of ``benchmarks/bench_epoch.py``: bytes per operator, and the extrapolation in the batch that
lets small CPU runs give the default configuration's counts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_epoch  # noqa: E402
from bench_common import BenchConfig, Stepper  # noqa: E402


def test_quadratic_through_three_points_is_exact() -> None:
    def f(x: float) -> float:
        return 3 * x * x - 2 * x + 7

    assert bench_epoch.quadratic_at((2, 4, 8), [f(2), f(4), f(8)], 96) == pytest.approx(f(96), rel=1e-12)


def test_counts_bytes_of_computing_operators_and_a_depthwise_backward_as_two_forwards() -> None:
    a, b = torch.ones(10), torch.ones(10)
    with bench_epoch.Counts() as counter:
        c = a + b  # 3 x 40 bytes
        c.view(2, 5)  # a view moves nothing
    assert counter.bytes == 120 and counter.compute == 1 and counter.flops == 0
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    w = torch.randn(16, 1, 3, 3, requires_grad=True)
    with bench_epoch.Counts() as counter:
        y = torch.nn.functional.conv2d(x, w, padding=1, groups=16)
    forward = counter.flops
    assert forward == 2 * 2 * 16 * 8 * 8 * 9  # 2 FLOPs per multiply-add
    with bench_epoch.Counts() as counter:
        y.sum().backward()
    assert counter.flops == 2 * forward  # input and weight gradients (flop_counter alone: 17 x forward)


def test_counts_extrapolated_from_small_batches_equal_a_direct_count() -> None:
    cfg = BenchConfig(layers=3, C=4, batch=12)
    predicted = bench_epoch.step_floor(cfg, paths=1)
    stepper = Stepper("ours", cfg, "cpu", kernels="torch")
    stepper.weight()
    for step in ("weight", "arch"):
        flops, moved = bench_epoch.count_step(stepper, step, paths=1)
        assert predicted[step]["flops"] == pytest.approx(flops, rel=1e-9), step
        assert predicted[step]["bytes"] == pytest.approx(moved, rel=1e-9), step
