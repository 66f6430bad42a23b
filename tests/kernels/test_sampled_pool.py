"""The sampled 3×3 pools (``sswp_fast.kernels.sampled_pool``), branches of the sampled first-stage kernels.

A slot group's first stage runs, per slot, a convolution variant, or where it has none its pool (max, average
without the padded cells, or none), forward and backward in the launches of ``sampled_dwpw``. Compared with
PyTorch's own pools, slot by slot: the max exactly, the mean and the gradients to float32 rounding (a gradient
sums up to nine windows' in its own order; a max window's gradient goes to its first maximum, ties included, as
PyTorch's does). Interpreter on CPU (tests/conftest.py), so shapes are small.
"""

from __future__ import annotations

import pytest
import torch

from sswp_fast.kernels.sampled_dwpw import sampled_dwpw, sampled_dwpw_reference
from sswp_fast.kernels.sampled_pool import AVG, MAX, pool_reference

from _support.sampled_banks import FIRST_HALVES, make

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
VARIANT = [-1, 1, -1, -1, 0]  # slot 1 and 4 convolve: their pool kinds are not read
POOL = [MAX, AVG, AVG, -1, MAX]


def _output_and_grads(fn, x: torch.Tensor, banks: list[torch.Tensor], dy: torch.Tensor, stride: int,
                      pool: torch.Tensor):
    leaves = [t.detach().requires_grad_() for t in (x, *banks)]
    variant = torch.tensor(VARIANT, device=x.device)
    y = fn(leaves[0], variant, stride, FIRST_HALVES, *leaves[1:], pool=pool)
    return y, torch.autograd.grad(y, leaves, dy, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("stride,h,w", [(1, 5, 5), (2, 8, 8), (2, 7, 6)])
def test_every_slot_runs_its_pool_or_its_variant_in_the_same_launches(stride, h, w):
    torch.manual_seed(0)
    c = 3
    pool = torch.tensor(POOL, device=DEVICE)
    x, banks = make(FIRST_HALVES, len(POOL), c, h, w)
    x[:, :c, 1:4, 1:4] = 0.5  # a window of equal values: the gradient goes to its first maximum
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    dy = torch.randn(2, len(POOL) * c, ho, wo, device=DEVICE)
    y, grads = _output_and_grads(sampled_dwpw, x, banks, dy, stride, pool)
    convolved, convolved_grads = _output_and_grads(sampled_dwpw, x, banks, dy, stride, None)
    for g, (variant, kind) in enumerate(zip(VARIANT, POOL, strict=True)):
        rows = slice(g * c, (g + 1) * c)
        if variant >= 0 or kind < 0:  # the pools change nothing else
            assert torch.equal(y[:, rows], convolved[:, rows]) and torch.equal(grads[0][:, rows],
                                                                               convolved_grads[0][:, rows])
            continue
        leaf = x[:, rows].detach().requires_grad_()
        ref_y = pool_reference(leaf, kind, stride)
        (ref_dx,) = torch.autograd.grad(ref_y, leaf, dy[:, rows])
        exact = 0 if kind == MAX else 1e-6
        torch.testing.assert_close(y[:, rows], ref_y, rtol=exact, atol=exact)
        torch.testing.assert_close(grads[0][:, rows], ref_dx, rtol=1e-6, atol=1e-6)  # up to 9 terms, any order
    for a, b in zip(grads[1:], convolved_grads[1:], strict=True):
        assert torch.equal(a, b), "the bank gradients are the convolutions' alone"


def test_the_reference_and_the_op_outside_the_interpreter_agree_with_the_kernels(monkeypatch):
    """The PyTorch reference and the op's PyTorch kernel, which CPU tensors take outside the interpreter
    (explicit pooling gradients), against the Triton kernels; the fake kernel, schema and autograd registration
    with ``pool`` checked by ``torch.library.opcheck``."""
    torch.manual_seed(1)
    pool = torch.tensor(POOL, device=DEVICE)
    x, banks = make(FIRST_HALVES, len(POOL), 2, 6, 6)
    dy = torch.randn(2, 2 * len(POOL), 3, 3, device=DEVICE)
    kernels = _output_and_grads(sampled_dwpw, x, banks, dy, 2, pool)
    reference = _output_and_grads(sampled_dwpw_reference, x, banks, dy, 2, pool)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, dy, pool = x.cpu().double(), dy.cpu().double(), pool.cpu()
    banks = [bank.cpu().double() for bank in banks]
    op = _output_and_grads(sampled_dwpw, x, banks, dy, 2, pool)
    for a, b, c in zip([kernels[0], *kernels[1]], [reference[0], *reference[1]], [op[0], *op[1]], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c.float(), a.cpu(), rtol=1e-5, atol=1e-5)
    torch.library.opcheck(torch.ops.sswp_fast.sampled_dwpw.default,
                          (x.requires_grad_(), torch.tensor(VARIANT), 2, [v for f in FIRST_HALVES for v in f],
                           [bank.requires_grad_() for bank in banks], None, pool))


def test_bf16_pools_round_like_pytorchs():
    """bf16 in, bf16 out: the max is exact, the mean and the gradients within one bf16 rounding of float32."""
    torch.manual_seed(2)
    variant, pool = torch.tensor([-1, -1], device=DEVICE), torch.tensor([MAX, AVG], device=DEVICE)
    x, banks = make(FIRST_HALVES, 2, 2, 6, 6)
    dy = torch.randn(2, 4, 6, 6, device=DEVICE)
    leaf = x.bfloat16().requires_grad_()
    y = sampled_dwpw(leaf, variant, 1, FIRST_HALVES, *(b.bfloat16() for b in banks), pool=pool)
    (dx,) = torch.autograd.grad(y, leaf, dy.bfloat16())
    ref_leaf = x.bfloat16().float().requires_grad_()
    ref_y = torch.cat([pool_reference(part, kind, 1) for part, kind in zip(ref_leaf.chunk(2, 1), (MAX, AVG),
                                                                            strict=True)], 1)
    (ref_dx,) = torch.autograd.grad(ref_y, ref_leaf, dy.bfloat16().float())
    assert y.dtype == dx.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref_y, rtol=2**-8, atol=0)
    torch.testing.assert_close(dx.float(), ref_dx, rtol=2**-8, atol=2**-8)
    assert torch.equal(y[:, :2].float(), ref_y[:, :2])


def test_pool_kinds_must_match_the_slots():
    x, banks = make(FIRST_HALVES, 2, 2, 6, 6)
    with pytest.raises(ValueError, match="pool must be a \\[2\\]"):
        sampled_dwpw(x, torch.tensor([-1, 0]), 1, FIRST_HALVES, *banks, pool=torch.tensor([MAX]))
