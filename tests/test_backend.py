"""Executor choice (sswp_fast.backend): ``auto`` never refuses, an explicit choice refuses in one line, and
``$SSWP_FAST_KERNELS`` stands in for ``auto`` only. Planned for CUDA on this CPU machine: choosing needs no
device."""

from __future__ import annotations

import pytest

from sswp_fast.backend import DEVICE_EXECUTOR_LIMITS, KERNELS_ENV, choose_executor, resolve_kernels
from sswp_fast.config import SearchConfig
from sswp_fast.errors import ConfigError

UNSUPPORTED = [  # (flags, processes): every feature the device executor lacks, one at a time
    ({"amp": "fp16"}, 1),
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


def test_the_limits_cover_every_case_of_this_file() -> None:
    assert len(DEVICE_EXECUTOR_LIMITS) == len(UNSUPPORTED)


@pytest.mark.parametrize(("flags", "processes"), UNSUPPORTED)
def test_auto_takes_the_pytorch_executor_for_what_the_device_executor_lacks(flags, processes) -> None:
    executor = choose_executor(_config(**flags), "cuda", processes)
    assert (executor.kernels, executor.dispatch) == ("torch", False)
    assert executor.reason.startswith("device executor lacks ")
    flag = next(limit.flag for limit in DEVICE_EXECUTOR_LIMITS if limit.asked(_config(**flags), processes))
    assert flag in executor.describe()


@pytest.mark.parametrize(("flags", "processes"), UNSUPPORTED)
def test_an_explicit_triton_with_an_unsupported_feature_is_a_one_line_error(flags, processes) -> None:
    with pytest.raises(ConfigError, match="--kernels triton runs the device executor, which lacks") as err:
        choose_executor(_config(kernels="triton", **flags), "cuda", processes)
    assert "\n" not in str(err.value) and "--kernels auto" in str(err.value)
    with pytest.raises(ConfigError, match="--compile default runs the device executor"):
        choose_executor(_config(compile="default", **flags), "cuda", processes)


def test_torchrun_and_bf16_get_the_device_executor_on_cuda_but_not_compiled() -> None:
    assert choose_executor(_config(), "cuda", 4).name == "device"
    assert choose_executor(_config(amp="bf16"), "cuda", 4).name == "device"
    for flags, processes in (({"amp": "bf16"}, 1), ({}, 4)):
        with pytest.raises(ConfigError, match="--compile default runs the device executor, which lacks"):
            choose_executor(_config(compile="default", **flags), "cuda", processes)


def test_the_quick_start_flags_get_the_device_executor_on_cuda() -> None:
    executor = choose_executor(_config(weight_optm="adam", prune_edges=True), "cuda")
    assert executor.name == "device"
    assert choose_executor(_config(weight_optm="adam", amp="bf16"), "cuda").name == "device"
    executor = choose_executor(_config(weight_optm="adam", amp="fp16"), "cuda")
    assert executor.describe() == "torch (device executor lacks --amp fp16)"


def test_an_explicit_flag_beats_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(KERNELS_ENV, "triton")
    assert choose_executor(_config(kernels="torch"), "cpu").kernels == "torch"
    assert resolve_kernels("torch", "cpu") == "torch"
    assert choose_executor(_config(), "cpu").describe() == f"device (${KERNELS_ENV} triton)"
    with pytest.raises(ConfigError, match=rf"\${KERNELS_ENV} triton runs the device executor"):
        choose_executor(_config(amp="fp16"), "cpu")
    monkeypatch.setenv(KERNELS_ENV, "torch")
    assert choose_executor(_config(), "cuda").kernels == "torch"


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
