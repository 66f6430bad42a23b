"""A whole weight step with the Triton kernels (the device executor; the interpreter on CPU) follows the PyTorch
executor's: the same loss, weights and BatchNorm statistics. The arch step's probing on the Triton kernels is
checked per cell in tests/test_dispatch.py; the float64 equivalence of the two executors through every phase
runs the device executor on its PyTorch kernels, in tests/test_device_executor.py."""

from __future__ import annotations

import pytest
import torch

from sswp_fast import Batch, SearchEngine
from sswp_fast.search.executors.choice import Executor

from _support.configs import tiny_config


def _batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch((torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)))


@pytest.mark.slow(seconds=100)  # about two minutes in the interpreter: the step is ~1,000 Triton launches
def test_triton_kernels_follow_the_pytorch_weight_step(one_torch_thread) -> None:
    pytest.importorskip("triton")
    engines = []
    for executor in (Executor("torch", False, "test"), Executor("triton", True, "test: the Triton kernels")):
        torch.manual_seed(0)
        engine = SearchEngine(tiny_config(batch_size=2, memory_format="contiguous"), 10,
                              executor=executor)
        engines.append((engine, engine.weight_step(_batch(0), warmup=False, skip_drop_prob=0.2).loss))
    (torch_engine, torch_loss), (triton_engine, triton_loss) = engines
    torch.testing.assert_close(triton_loss, torch_loss, rtol=1e-4, atol=1e-4)
    theirs = torch_engine.net.state_dict()
    moved = [name for name, value in triton_engine.net.state_dict().items() if "running_mean" in name and value.any()]
    assert moved, "the step must have updated BatchNorm statistics"
    for name, value in triton_engine.net.state_dict().items():
        torch.testing.assert_close(value, theirs[name], rtol=1e-3, atol=1e-4, msg=name)
