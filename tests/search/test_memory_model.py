"""The device-free memory model (sswp_fast.search.memory_model) and the recompute choice it drives (run_plan): the meta
device's count equals the count of the same steps run on real tensors, and ``--recompute auto`` takes the fastest
mode that fits the memory free."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sswp_fast.runtime import devices
from sswp_fast.search.config import SearchConfig
from sswp_fast.search.engine import Batch
from sswp_fast.search.executors.choice import Executor
from sswp_fast.search.memory_model import (
    HEADROOM,
    MODES_FASTEST_FIRST,
    FixedPathEngine,
    LiveBytes,
    fastest_fitting,
    modelled_peaks,
)
from sswp_fast.search.plan import GPU_SIZES_GB, plan_recompute

TORCH = Executor("torch", False, "test")
DEVICE = Executor("triton", True, "test")


def _config(**flags) -> SearchConfig:
    return SearchConfig(**{"layers": 5, "init_channels": 8, "batch_size": 8, "dataset": "digits", **flags}).resolved()


@pytest.mark.parametrize("data_mode", ["SimCLR", "supervised"])
def test_the_meta_count_equals_the_count_of_the_same_steps_on_real_tensors(data_mode, one_torch_thread) -> None:
    config = _config(data_mode=data_mode)
    predicted = modelled_peaks(config, 10, 16, 8, TORCH)
    views = 1 if data_mode == "supervised" else 2
    batch = Batch(tuple(torch.randn(8, 3, 16, 16) for _ in range(views)), torch.zeros(8, dtype=torch.long))
    for mode in MODES_FASTEST_FIRST:
        engine = FixedPathEngine(dataclasses.replace(config, recompute=mode), 10, TORCH, device="cpu")
        assert engine.persistent_bytes() == predicted[mode].persistent
        counted = []
        for kind in ("weight", "arch"):
            with LiveBytes() as live:
                engine.weight_step(batch, warmup=False) if kind == "weight" else engine.arch_step(batch)
            counted.append(live.peak)
        assert counted == [predicted[mode].weight_step, predicted[mode].arch_step], mode


def test_live_bytes_frees_what_dies_and_ignores_what_existed() -> None:
    kept = torch.zeros(10)
    with LiveBytes() as live:
        a = torch.empty(100, device="meta")
        b = a * 2  # 400 bytes more
        del a, b
        c = kept + 1
    assert live.peak == 800 and live.current == 40 == c.numel() * 4


@pytest.mark.parametrize("executor", [TORCH, DEVICE])
def test_recompute_modes_trade_memory_as_documented(executor) -> None:
    predicted = modelled_peaks(_config(layers=3, init_channels=4), 10, 16, 16, executor)
    assert predicted["none"].peak > predicted["edge"].peak
    assert predicted["none"].peak > predicted["cell"].peak
    doubled = modelled_peaks(_config(layers=3, init_channels=4), 10, 16, 32, executor)
    for mode in MODES_FASTEST_FIRST:  # activations grow with the batch, parameters do not
        assert doubled[mode].persistent == predicted[mode].persistent
        assert doubled[mode].peak > predicted[mode].peak


def test_the_fastest_fitting_mode_keeps_the_margin() -> None:
    predicted = {"none": 8.0, "edge": 2.0, "cell": 1.0}
    assert fastest_fitting(predicted, 8.0 * HEADROOM) == "none"
    assert fastest_fitting(predicted, 8.0 * HEADROOM - 0.01) == "edge"
    assert fastest_fitting(predicted, 1.0) is None


def test_auto_takes_the_fastest_mode_that_fits_the_free_memory(monkeypatch) -> None:
    predicted = {"none": 8.0, "edge": 2.0, "cell": 1.0}
    config = _config()
    for free_gb, mode in ((100, "none"), (5, "edge"), (1.3, "cell")):
        monkeypatch.setattr(devices, "free_memory", lambda device, gb=free_gb: gb * 1e9)
        choice = plan_recompute(config, torch.device("cpu"), TORCH, predicted, 0.0)
        assert choice.mode == mode and f"{free_gb:.1f} GB RAM available" in choice.reason
    monkeypatch.setattr(devices, "free_memory", lambda device: 0.5e9)
    short = plan_recompute(config, torch.device("cpu"), TORCH, predicted, 0.0)
    assert short.mode == "cell" and "lower --batch_size" in short.reason  # auto never refuses
    monkeypatch.setattr(devices, "free_memory", lambda device: 9e9)
    assert plan_recompute(config, torch.device("cpu"), TORCH, predicted, 2.0).mode == "edge"  # dataset held there


def test_an_absent_gpu_gets_the_pick_for_each_size() -> None:
    predicted = {"none": 30.0, "edge": 6.0, "cell": 3.0}
    choice = plan_recompute(_config(), torch.device("cuda:7"), TORCH, predicted, 0.0)
    if devices.present(torch.device("cuda:7")):
        pytest.skip("this machine has a cuda:7")
    assert choice.mode is None
    assert choice.picks() == {16: "edge", 24: "edge", 40: "none", 80: "none", 141: "none"}
    assert set(choice.picks()) == set(GPU_SIZES_GB)
    assert "none on 80 GB" in choice.describe()


def test_explicit_modes_and_the_compiler_are_kept() -> None:
    predicted = {"none": 1.0, "edge": 1.0, "cell": 1.0}
    assert plan_recompute(_config(recompute="cell"), torch.device("cpu"), TORCH, predicted, 0).mode == "cell"
    compiled = plan_recompute(_config(compile="default"), torch.device("cpu"), DEVICE, predicted, 0)
    assert compiled.mode == "edge" and "compiler" in compiled.reason
    measured = plan_recompute(_config(max_memory=4.0), torch.device("cpu"), TORCH, predicted, 0)
    assert measured.mode is None and "--max_memory 4" in measured.reason
