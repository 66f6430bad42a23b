"""The Triton kernels against PyTorch eager on a GPU (skipped without CUDA: the interpreter is no benchmark).

    pytest benchmarks/test_bench_kernels.py --benchmark-only

* Per op: forward + backward of each sep/dil conv at the default CIFAR search shapes (batch 192 = two views of
  96; C = 36 / 72 / 144 at 32 / 16 / 8 px, the three stages of the 20-cell network), ``--kernels triton`` vs
  ``torch``; ``extra_info`` records ``torch.cuda.max_memory_allocated`` above the input.
* Whole steps: a weight step and an arch step of the default CIFAR search (L=20, C=36, batch 96) with each
  backend, through the same :class:`bench_common.Stepper` as the search-step benchmarks.
"""

from __future__ import annotations

import pytest
import torch
from bench_common import CUDA_CONFIG, Stepper, device_name

from sswp_fast.search.space import build_op, use_kernels

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: Triton kernels need a GPU")

OPS = ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
STAGES = [(36, 32), (72, 16), (144, 8)]
BATCH = 192
BACKENDS = ["torch", "triton"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("channels", "size"), STAGES, ids=[f"C{c}-{s}px" for c, s in STAGES])
@pytest.mark.parametrize("name", OPS)
def test_op_forward_backward(benchmark, name: str, channels: int, size: int, backend: str) -> None:
    op = build_op(name, channels, 1, affine=False).cuda()
    use_kernels(op, backend)
    x = torch.randn(BATCH, channels, size, size, device="cuda", requires_grad=True)
    upstream = torch.randn_like(op(x))

    def step() -> None:
        x.grad = None
        op(x).backward(upstream)
        torch.cuda.synchronize()

    step()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    benchmark.group = f"op-{name}-C{channels}-{size}px"
    benchmark.extra_info.update({"backend": backend, "op": name, "channels": channels, "size": size,
                                 "batch": BATCH, "device_name": device_name("cuda"), "torch": torch.__version__})
    benchmark.pedantic(step, rounds=20, warmup_rounds=2)
    benchmark.extra_info["extra_peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20


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
