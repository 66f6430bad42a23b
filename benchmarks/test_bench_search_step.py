"""Seconds per search step: ours vs ours-with-reference-quirks vs the unchanged reference.

Run (from the repository root)::

    SSWP_REFERENCE=/path/to/SSWP-NAS pytest benchmarks/ --benchmark-only

* CPU: L=8, C=16, batch 32 (64 images of 32x32), synthetic data, fixed seed.
* CUDA: the default CIFAR search (L=20, C=36, batch 96), skipped when CUDA is absent.

Each case warms up (``SSWP_BENCH_WARMUP`` steps, default 1) and then times ``SSWP_BENCH_ROUNDS`` single steps
(default 5); ``SSWP_BENCH_THREADS`` fixes the intra-op thread count for every implementation. Peak memory is
process-wide, so it is measured separately, one fresh process per implementation: see ``step_memory.py`` and
``run_all.py``.
"""

from __future__ import annotations

import pytest
import torch
from bench_common import (
    CPU_CONFIG,
    CUDA_CONFIG,
    IMPLEMENTATIONS,
    STEPS,
    BenchConfig,
    Stepper,
    apply_threads,
    config_info,
    device_name,
    env_int,
)
from reference_harness import skip_reason

ROUNDS = env_int("SSWP_BENCH_ROUNDS", 5)
WARMUP = env_int("SSWP_BENCH_WARMUP", 1)


def _impl_param(impl: str) -> pytest.param:
    reason = skip_reason() if impl == "reference" else None
    marks = [pytest.mark.skip(reason=reason)] if reason else []
    return pytest.param(impl, id=impl, marks=marks)


IMPL_PARAMS = [_impl_param(impl) for impl in IMPLEMENTATIONS]


def _run(benchmark, impl: str, step: str, cfg: BenchConfig, device: str) -> None:
    threads = apply_threads()
    stepper = Stepper(impl, cfg, device)
    fn = stepper.step_fn(step)
    benchmark.group = f"search-step-{device}-{step}"
    benchmark.extra_info.update({
        "implementation": impl,
        "step": step,
        "config": config_info(cfg),
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "torch_threads": threads,
    })
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)
    if device == "cuda":
        benchmark.extra_info["cuda_max_memory_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("impl", IMPL_PARAMS)
def test_search_step_cpu(benchmark, impl: str, step: str) -> None:
    _run(benchmark, impl, step, CPU_CONFIG, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available: the default CIFAR config "
                    "(L=20, C=36, batch 96) is benchmarked on a GPU only")
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("impl", IMPL_PARAMS)
def test_search_step_cuda(benchmark, impl: str, step: str) -> None:
    _run(benchmark, impl, step, CUDA_CONFIG, "cuda")
