"""The launch counter of ``benchmarks/bench_launch_counts.py``: one of our custom ops costs what runs inside it;
one row can be counted alone."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_launch_counts  # noqa: E402
from bench_launch_counts import Counts  # noqa: E402

from sswp_fast.kernels import common  # noqa: E402
from sswp_fast.kernels.sampled_reduce import sampled_reduce, sampled_reduce_reference  # noqa: E402


def test_one_of_our_ops_costs_the_launches_inside_it_not_one_more(monkeypatch) -> None:
    """On its PyTorch kernel, ``sswp_fast::sampled_reduce`` costs exactly what that kernel launches when run
    directly; the op itself adds nothing (the counter's outer mode is off inside an op)."""
    x, reduce, base = torch.randn(2, 8, 4, 4), torch.tensor([1, 0]), torch.randn(2, 8, 2, 2)
    w_even, w_odd = torch.randn(4, 4), torch.randn(4, 4)
    with Counts() as direct:
        sampled_reduce_reference(x, reduce, w_even, w_odd, base)
    monkeypatch.setattr(common, "interpreter_on", lambda: False)
    with Counts() as op:
        sampled_reduce(x, reduce, w_even, w_odd, base)
    assert direct.compute > 2
    assert op.compute == direct.compute
    assert op.ops["sswp_fast.sampled_reduce"] == 1


def test_one_row_is_counted_alone_and_nothing_is_written(tmp_path, capsys) -> None:
    """``--only`` with ``--step``: one executor's one step, printed, for re-counting a row within minutes."""
    assert bench_launch_counts.main(["--layers", "3", "--only", "torch", "--step", "arch",
                                     "--out", str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(rows) == 1 and "'executor': 'torch', 'step': 'arch'" in rows[0] and "'syncs': 2" in rows[0]
    assert not list(tmp_path.iterdir())


def test_allocations_dtype_arithmetic_and_profiler_records_launch_nothing() -> None:
    """``new_empty`` takes memory from the allocator, ``promote_types`` is host arithmetic on dtypes and
    ``torch.optim`` wraps its step in profiler records: none of them is a kernel. A fill is one."""
    x = torch.randn(3)
    with Counts() as counts:
        x.new_empty(4)
        torch.promote_types(x.dtype, torch.float64)
        with torch.profiler.record_function("step"):
            pass
    assert counts.compute == 0 and sum(counts.ops.values()) >= 2
    with Counts() as counts:
        x.new_zeros(4)
    assert counts.compute == 1


def test_a_sampled_reduce_counts_the_flops_of_its_reducing_slots_convolutions() -> None:
    """As ATen's own two 1×1 convolutions of one slot count them, once per reducing slot (the other slot passes
    ``base`` through); the backward with weight gradients counts twice that."""
    from sswp_fast.kernels.sampled_reduce import sampled_reduce

    x, base = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 3, 3)
    weights = [torch.randn(4, 4, requires_grad=True) for _ in range(2)]
    with Counts() as aten:
        for w in weights:
            torch.nn.functional.conv2d(x[:, :4, ::2, ::2], w.detach()[:2].view(2, 4, 1, 1))
    with Counts() as op:
        y = sampled_reduce(x, torch.tensor([1, 0]), *weights, base)
    with Counts() as backward:
        y.sum().backward()
    assert aten.flops > 0 and op.flops == aten.flops and backward.flops == 2 * aten.flops
