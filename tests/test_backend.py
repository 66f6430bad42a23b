"""Kernel backend selection (sswp_fast.backend): --kernels, $SSWP_FAST_KERNELS, and the errors that explain them."""

from __future__ import annotations

import pytest

from sswp_fast.backend import KERNELS_ENV, resolve_kernels
from sswp_fast.config import SearchConfig
from sswp_fast.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_override(monkeypatch) -> None:
    monkeypatch.delenv(KERNELS_ENV, raising=False)


def test_auto_is_triton_on_cuda_and_torch_on_cpu() -> None:
    assert resolve_kernels("auto", "cpu") == "torch"
    assert resolve_kernels("auto", "cuda") == "triton"
    assert resolve_kernels("torch", "cuda") == "torch"


def test_the_environment_overrides_the_flag(monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(KERNELS_ENV, "triton")
    assert resolve_kernels("torch", "cpu") == "triton"
    monkeypatch.setenv(KERNELS_ENV, "torch")
    assert resolve_kernels("auto", "cuda") == "torch"


def test_triton_on_cpu_needs_the_interpreter(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
        resolve_kernels("triton", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_kernels("triton", "cpu") == "triton"


def test_unknown_choices_are_rejected(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="--kernels must be auto, triton or torch"):
        SearchConfig(kernels="cuda").resolved()
    monkeypatch.setenv(KERNELS_ENV, "fast")
    with pytest.raises(ConfigError, match=KERNELS_ENV):
        resolve_kernels("auto", "cpu")
