"""Shared test fixtures: small configurations sized for the 2-core CI machine."""

from __future__ import annotations

import contextlib
import os

import torch

with contextlib.suppress(ImportError):  # first, so that Triton's own library stays compiled, as in a process that
    import triton  # noqa: F401  turns the interpreter on late (sswp_fast.kernels.common); triton is optional

if not torch.cuda.is_available():  # Triton kernels run on CPU tensors only under the interpreter, which each launch
    os.environ.setdefault("TRITON_INTERPRET", "1")  # asks for (sswp_fast.kernels.common), whenever it was set

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_torch_thread():
    """Tiny ops are far slower with a thread pool on a busy 2-core machine; results are identical."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``@pytest.mark.gpu(reason=...)`` tests skip with their reason where CUDA is absent. Then the slow tier's
    longest tests first, by their ``@pytest.mark.slow(seconds=...)`` estimate (measured on the 2-core CI machine;
    unmarked: 0), so that ``.ci/run``'s work-stealing workers start them at once and share the short ones out
    while they run. Only the order changes; the fast tier, with no estimates, keeps its own."""
    if not torch.cuda.is_available():
        for item in items:
            gpu = item.get_closest_marker("gpu")
            if gpu is not None:
                item.add_marker(pytest.mark.skip(reason=f"no CUDA device on this machine: {gpu.kwargs['reason']}"))

    def seconds(item: pytest.Item) -> float:
        slow = item.get_closest_marker("slow")
        return slow.kwargs.get("seconds", 0) if slow else 0

    items.sort(key=seconds, reverse=True)
