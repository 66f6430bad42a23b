"""Executor choice (sswp_fast.search.executors.choice): ``auto`` never refuses, an explicit choice refuses in one line,
and ``$SSWP_FAST_KERNELS`` stands in for ``auto`` only. Planned for CUDA on this CPU machine: choosing needs no
device."""

from __future__ import annotations

import pytest

from sswp_fast.errors import ConfigError
from sswp_fast.search.config import SearchConfig
from sswp_fast.search.executors.choice import KERNELS_ENV, choose_executor, resolve_kernels

EVERY_FEATURE = [  # (flags, processes): the run features, one at a time, that the device executor runs
    ({"amp": "fp16"}, 1), ({"amp": "bf16"}, 1), ({}, 4), ({"weight_optm": "adam"}, 1), ({"prune_edges": True}, 1),
    ({"reference_quirks": True}, 1), ({"data_mode": "byol"}, 1), ({"data_mode": "supervised"}, 1),
]


@pytest.fixture(autouse=True)
def _no_override(monkeypatch) -> None:
    monkeypatch.delenv(KERNELS_ENV, raising=False)


def _config(**flags) -> SearchConfig:
    return SearchConfig(**flags).resolved()


def test_auto_is_the_device_executor_on_cuda_and_pytorch_on_cpu() -> None:
    cuda = choose_executor(_config(), "cuda")
    assert (cuda.kernels, cuda.dispatch, cuda.name) == ("triton", True, "device")
    cpu = choose_executor(_config(), "cpu")
    assert (cpu.kernels, cpu.dispatch) == ("torch", False)
    assert cpu.describe() == "torch (cpu device: the Triton kernels run on CUDA)"


@pytest.mark.parametrize(("flags", "processes"), EVERY_FEATURE)
def test_auto_takes_the_device_executor_on_cuda_whatever_the_run_asks_for(flags, processes) -> None:
    executor = choose_executor(_config(**flags), "cuda", processes)
    assert (executor.kernels, executor.dispatch) == ("triton", True)
    assert choose_executor(_config(kernels="triton", **flags), "cuda", processes).name == "device"


def test_torchrun_and_bf16_get_the_device_executor_on_cuda_but_not_compiled() -> None:
    assert choose_executor(_config(), "cuda", 4).name == "device"
    assert choose_executor(_config(amp="bf16"), "cuda", 4).name == "device"
    for flags, processes in (({"amp": "bf16"}, 1), ({}, 4)):
        with pytest.raises(ConfigError, match="--compile default runs the device executor's compiled steps, which "
                                              "lack"):
            choose_executor(_config(compile="default", **flags), "cuda", processes)


def test_the_quick_start_flags_get_the_device_executor_on_cuda() -> None:
    executor = choose_executor(_config(weight_optm="adam", prune_edges=True), "cuda")
    assert executor.name == "device"
    assert choose_executor(_config(weight_optm="adam", amp="bf16"), "cuda").name == "device"


def test_an_explicit_flag_beats_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(KERNELS_ENV, "triton")
    assert choose_executor(_config(kernels="torch"), "cpu").kernels == "torch"
    assert resolve_kernels("torch", "cpu") == "torch"
    assert choose_executor(_config(), "cpu").describe() == f"device (${KERNELS_ENV} triton)"
    assert choose_executor(_config(amp="fp16"), "cpu").name == "device"
    monkeypatch.setenv(KERNELS_ENV, "torch")
    assert choose_executor(_config(), "cuda").kernels == "torch"


def test_the_flag_is_checked_with_the_configuration_and_the_variable_here(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="--kernels must be"):
        _config(kernels="cuda")
    monkeypatch.setenv(KERNELS_ENV, "cuda")
    with pytest.raises(ConfigError, match=rf"^\${KERNELS_ENV} must be one of auto, triton, torch, got 'cuda'$"):
        choose_executor(_config(), "cuda")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
        choose_executor(_config(kernels="triton"), "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert choose_executor(_config(kernels="triton"), "cpu").kernels == "triton"


def test_compile_runs_the_device_executor_with_the_kernels_the_device_has() -> None:
    cpu = choose_executor(_config(compile="default"), "cpu")
    assert (cpu.kernels, cpu.dispatch) == ("torch", True)
    cuda = choose_executor(_config(compile="default"), "cuda")
    assert (cuda.kernels, cuda.dispatch) == ("triton", True)


def test_unknown_choices_are_rejected(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="--kernels must be auto, triton or torch"):
        SearchConfig(kernels="cuda").resolved()
    monkeypatch.setenv(KERNELS_ENV, "fast")
    with pytest.raises(ConfigError, match=KERNELS_ENV):
        choose_executor(_config(), "cpu")
