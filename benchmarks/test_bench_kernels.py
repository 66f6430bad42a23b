"""The Triton kernels against PyTorch eager on a GPU (skipped without CUDA: the interpreter is no benchmark).

    pytest benchmarks/test_bench_kernels.py --benchmark-only

A weight step and an arch step of the default CIFAR search (L=20, C=36, batch 96) with each backend
(``--kernels triton`` vs ``torch``), through the same :class:`bench_common.Stepper` as the search-step benchmarks;
``extra_info`` records ``torch.cuda.max_memory_allocated`` above the step's start.
"""

from __future__ import annotations

import pytest
import torch
from bench_common import CUDA_CONFIG, Stepper, device_name

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: Triton kernels need a GPU")

BACKENDS = ["torch", "triton"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("step", ["weight", "arch"])
def test_search_step(benchmark, step: str, backend: str) -> None:
    stepper = Stepper("ours", CUDA_CONFIG, "cuda", kernels=backend)
    fn = stepper.step_fn(step)
    fn()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    benchmark.group = f"search-step-cuda-{step}-kernels"
    benchmark.extra_info.update({"backend": backend, "step": step, "device_name": device_name("cuda"),
                                 "torch": torch.__version__})
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    benchmark.extra_info["extra_peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
