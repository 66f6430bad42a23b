"""The slotted, device-dispatched 3×3 pooling kernels (``sswp_fast.kernels.sampled_pool``).

One launch pools every slot of a group with the pool its device-side index selects (max, average without the
padded cells, or none); its backward is one launch. Compared with PyTorch's own pools, slot by slot: the max
exactly, the mean and the gradients to float32 rounding (a gradient sums up to nine windows' in its own
order; a max window's gradient goes to its first maximum, ties included, as PyTorch's does). Interpreter on
CPU (tests/conftest.py), so shapes are small.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_compile import compiles_for_sm90

from sswp_fast.kernels.sampled_pool import _BLOCK_ELEMENTS, _MAX_BLOCK_R, AVG, MAX, sampled_pool, sampled_pool_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _pytorch(x: torch.Tensor, kind: int, stride: int) -> torch.Tensor:
    if kind == MAX:
        return F.max_pool2d(x, 3, stride, 1)
    return F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)


def _output_and_grad(fn, x: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.detach().requires_grad_()
    y = fn(leaf)
    return y, torch.autograd.grad(y, leaf, dy)[0]


@pytest.mark.parametrize("stride,h,w", [(1, 5, 5), (2, 8, 8), (2, 7, 6)])
def test_every_slot_runs_its_pool(stride, h, w):
    torch.manual_seed(0)
    c = 3
    pool = torch.tensor([MAX, -1, AVG, MAX], device=DEVICE)
    x = torch.randn(2, 4 * c, h, w, device=DEVICE)
    x[:, :c, 1:4, 1:4] = 0.5  # a window of equal values: the gradient goes to its first maximum
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    dy = torch.randn(2, 4 * c, ho, wo, device=DEVICE)
    y, dx = _output_and_grad(lambda t: sampled_pool(t, pool, stride), x, dy)
    assert y.shape == dy.shape
    for g, kind in enumerate(pool.tolist()):
        rows = slice(g * c, (g + 1) * c)
        if kind < 0:
            assert not y[:, rows].any() and not dx[:, rows].any(), "a slot that pooled nothing"
            continue
        ref_y, ref_dx = _output_and_grad(lambda t, k=kind: _pytorch(t, k, stride), x[:, rows], dy[:, rows])
        exact = 0 if kind == MAX else 1e-6
        torch.testing.assert_close(y[:, rows], ref_y, rtol=exact, atol=exact)
        torch.testing.assert_close(dx[:, rows], ref_dx, rtol=1e-6, atol=1e-6)  # up to 9 terms, summed in any order


def test_a_base_is_added_in_the_same_launch_and_gets_the_outputs_gradient():
    """``base`` (the sampled convolution's output in the device executor) plus the pools, in one launch: equal to
    adding them afterwards, in the kernels and in the reference; ``base``'s gradient is the output's."""
    torch.manual_seed(3)
    pool = torch.tensor([MAX, -1, AVG], device=DEVICE)
    x = torch.randn(2, 6, 6, 6, device=DEVICE)
    base = torch.randn(2, 6, 3, 3, device=DEVICE)
    dy = torch.randn(2, 6, 3, 3, device=DEVICE)
    for fn in (sampled_pool, sampled_pool_reference):
        leaves = [x.detach().requires_grad_(), base.detach().requires_grad_()]
        y = fn(leaves[0], pool, 2, leaves[1])
        dx, dbase = torch.autograd.grad(y, leaves, dy)
        alone, dx_alone = _output_and_grad(lambda t, f=fn: f(t, pool, 2), x, dy)
        torch.testing.assert_close(y, alone + base, rtol=1e-6, atol=1e-6)
        assert torch.equal(dbase, dy) and torch.equal(dx, dx_alone)
    with pytest.raises(ValueError, match="base must be"):
        sampled_pool(x, pool, 1, base)


def test_the_reference_and_the_op_outside_the_interpreter_agree_with_the_kernels(monkeypatch):
    """The PyTorch reference (no host read) and the op's PyTorch kernel, which CPU tensors take outside the
    interpreter (explicit pooling gradients), against the Triton kernels; the fake kernel, schema and autograd
    registration checked by ``torch.library.opcheck``."""
    from sswp_fast.kernels import _common

    torch.manual_seed(1)
    pool = torch.tensor([AVG, MAX, -1], device=DEVICE)
    x = torch.randn(2, 6, 6, 6, device=DEVICE)
    dy = torch.randn(2, 6, 3, 3, device=DEVICE)
    kernels = _output_and_grad(lambda t: sampled_pool(t, pool, 2), x, dy)
    reference = _output_and_grad(lambda t: sampled_pool_reference(t, pool, 2), x, dy)
    monkeypatch.setattr(_common, "INTERPRETED", False)
    x, dy, pool = x.cpu().double(), dy.cpu().double(), pool.cpu()
    op = _output_and_grad(lambda t: sampled_pool(t, pool, 2), x, dy)
    for a, b, c in zip(kernels, reference, op, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(c.float(), a.cpu(), rtol=1e-6, atol=1e-6)
    for base in (None, torch.randn_like(dy).requires_grad_()):
        torch.library.opcheck(torch.ops.sswp_fast.sampled_pool.default, (x.requires_grad_(), pool, 2, base))


def test_bf16_pools_round_like_pytorchs():
    """bf16 in, bf16 out: the max is exact, the mean and the gradients within one bf16 rounding of float32."""
    torch.manual_seed(2)
    pool = torch.tensor([MAX, AVG], device=DEVICE)
    x = torch.randn(2, 4, 6, 6, device=DEVICE)
    dy = torch.randn(2, 4, 6, 6, device=DEVICE)
    y, dx = _output_and_grad(lambda t: sampled_pool(t, pool, 1), x.bfloat16(), dy.bfloat16())
    ref_y, ref_dx = _output_and_grad(lambda t: sampled_pool_reference(t, pool, 1), x.bfloat16().float(),
                                     dy.bfloat16().float())
    assert y.dtype == dx.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref_y, rtol=2**-8, atol=0)
    torch.testing.assert_close(dx.float(), ref_dx, rtol=2**-8, atol=2**-8)
    assert torch.equal(y[:, :2].float(), ref_y[:, :2])


@pytest.mark.slow
def test_pool_kernels_compile_for_sm90(tmp_path):
    """Compile-only check (no GPU needed): both kernels, fp32 (what the device executor runs), with the widest
    block, to an sm_90 cubin, without the interpreter (about 40 s: the backward unrolls nine windows of nine
    taps)."""
    compiles_for_sm90(tmp_path, "sswp_fast.kernels.sampled_pool",
                      {"_pool_fwd_kernel": {"HAS_BASE": True}, "_pool_bwd_kernel": {}},
                      ("fp32",), {"STRIDE": 2, "BLOCK_P": _BLOCK_ELEMENTS // _MAX_BLOCK_R, "BLOCK_R": _MAX_BLOCK_R},
                      ints=("pool_ptr",))
