"""Seconds per InfoNCE forward+backward under pytest-benchmark: the compiled op against the PyTorch formula.

    pytest benchmarks/test_bench_info_nce.py --benchmark-only
    pytest benchmarks/test_bench_info_nce.py --benchmark-only -k "cuda and 16384"

2N in {192, 1024, 4096, 16384}, D = 128, temperature 0.07; CPU in fp32, CUDA (skipped without a GPU) in fp32
and bf16. Peak memory is measured per fresh process by ``bench_info_nce.py``; on CUDA the cases here also record
``torch.cuda.max_memory_allocated`` above the features in ``extra_info``.
"""

from __future__ import annotations

import pytest
import torch
from bench_common import apply_threads, device_name
from bench_info_nce import DIM, DTYPES, SIZES, forward_backward, loss_fn, make_features

ROUNDS = {192: 50, 1024: 10, 4096: 3, 16384: 1}  # CPU: enough passes to steady the small sizes
CASES = [pytest.param(device, dtype, id=f"{device}-{dtype}",
                      marks=[pytest.mark.skipif(device == "cuda" and not torch.cuda.is_available(),
                                                reason="no CUDA device")])
         for device, dtypes in DTYPES.items() for dtype in dtypes]


@pytest.mark.parametrize("rows", SIZES)
@pytest.mark.parametrize("impl", ["op", "formula"])
@pytest.mark.parametrize(("device", "dtype"), CASES)
def test_info_nce_forward_backward(benchmark, impl: str, rows: int, device: str, dtype: str) -> None:
    fn = loss_fn(impl)
    features = make_features(rows, device, dtype)
    cuda = device == "cuda"

    def step() -> None:
        forward_backward(fn, features)
        if cuda:
            torch.cuda.synchronize()

    step()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0
    benchmark.group = f"info-nce-{device}-{dtype}-{rows}"
    benchmark.extra_info.update({"implementation": impl, "rows": rows, "dim": DIM, "dtype": dtype,
                                 "device": device, "device_name": device_name(device), "torch": torch.__version__,
                                 "torch_threads": apply_threads()})
    benchmark.pedantic(step, rounds=ROUNDS[rows] if not cuda else 20, warmup_rounds=0)
    if cuda:
        benchmark.extra_info["extra_peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
