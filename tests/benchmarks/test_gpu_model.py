"""The GPU time model of ``benchmarks/gpu_model.py``: its extrapolation in the number of cells, its step time
formula, and the path it counts the work of."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import gpu_model  # noqa: E402

KEYS = gpu_model.COUNTED


def _row(layers: int, normal_cell: float, rest: float, executor: str = "x", step: str = "weight") -> dict:
    """A count that is ``rest`` plus ``normal_cell`` per normal cell (every cell count has two reductions)."""
    return {"layers": layers, "executor": executor, "step": step,
            **{key: rest + (layers - 2) * normal_cell for key in KEYS}}


def test_counts_grow_by_the_same_amount_per_normal_cell() -> None:
    rows = [_row(3, 100.0, 40.0), _row(8, 100.0, 40.0), _row(8, 1.0, 1.0, step="arch")]
    for layers in (8, 20):
        assert gpu_model.counts_at(rows, "x", "weight", layers) == pytest.approx(
            {key: 40.0 + (layers - 2) * 100.0 for key in KEYS})


def test_work_scales_the_full_size_count_by_the_ratio_to_the_same_path() -> None:
    rows = [{**_row(layers, 10.0, 0.0, executor="torch")} for layers in (3, 8)]
    rows += [{**_row(layers, 30.0, 0.0, executor="device"), "sampled_flops": 15.0 * (layers - 2),
              "sampled_bytes": 10.0 * (layers - 2)} for layers in (3, 8)]
    full = {"flops": 1e12, "bytes": 1e9}
    assert gpu_model.work_at(rows, "device", "weight", 20, full) == pytest.approx({"flops": 2e12, "bytes": 3e9})
    rows += [_row(layers, 20.0, 0.0, executor="reference") for layers in (3, 8)]  # no same-path count
    assert gpu_model.work_at(rows, "reference", "weight", 20, full) == pytest.approx({"flops": 2e12, "bytes": 2e9})


def test_a_step_overlaps_host_and_device_without_syncs_and_adds_them_with_syncs() -> None:
    gpu = gpu_model.Gpu("test", fp32_tflops=1.0, hbm_tb_per_s=1.0, source="test")
    work = {"flops": 2e9, "bytes": 1e9}  # 2 ms + 1 ms of work
    counts = {"aten": 100, "launches": 100, "syncs": 0}
    device = 100 * (gpu_model.KERNEL_FLOOR_US + gpu_model.GAP_US) * 1e-6 + 3e-3
    for host_us in (1.0, 1000.0):
        host = 100 * host_us * 1e-6
        assert gpu_model.predict(counts, work, gpu, host_us, graph=False) == pytest.approx(max(host, device))
        assert gpu_model.predict({**counts, "syncs": 1}, work, gpu, host_us, graph=False) == pytest.approx(
            host + device)
    replayed = gpu_model.predict(counts, work, gpu, 1000.0, graph=True)
    assert replayed == pytest.approx(100 * (gpu_model.KERNEL_FLOOR_US + gpu_model.GRAPH_GAP_US) * 1e-6 + 3e-3)


def test_the_counted_path_runs_every_op_equally_often_and_pairs_each_with_another() -> None:
    active, inactive = gpu_model.representative_path(7)
    ops = Counter(op for row in active for op in row)
    assert set(ops.values()) == {14}  # 7 cells x 14 edges: each of the 7 ops 14 times
    assert all(a != b for row, other in zip(active, inactive, strict=True) for a, b in zip(row, other, strict=True))
