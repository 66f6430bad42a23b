"""The sampled factorized-reduce kernels (``sswp_fast.kernels.sampled_reduce``).

One launch runs the factorized reduce (ReLU, then 1×1 convolutions of the even and of the odd pixels, each half of
the channels) in the slots whose device-side flag is set and copies ``base`` into the others; the backward pass is
one launch and one fill. Compared with the DARTS module itself (:class:`~sswp_fast.search.space.FactorizedReduce`
without its BatchNorm), slot by slot, and with the op's PyTorch reference: to float32 rounding (a weight gradient sums
over N×H×W/4 pixels across programs), bf16 to one bf16 rounding of the output. Interpreter on CPU
(tests/conftest.py), so shapes are small.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sswp_fast.kernels.sampled_reduce import sampled_reduce, sampled_reduce_reference

from _support.kernel_compile import compiles_for_sm90

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _module(x: torch.Tensor, w_even: torch.Tensor, w_odd: torch.Tensor) -> torch.Tensor:
    """One slot through the DARTS factorized reduce, as its module computes it (ReLU, conv_1 on x, conv_2 on
    x[:, :, 1:, 1:], both stride 2, concatenated)."""
    c = x.shape[1]
    relu = torch.relu(x)
    return torch.cat([F.conv2d(relu, w_even.view(c // 2, c, 1, 1), stride=2),
                      F.conv2d(relu[:, :, 1:, 1:], w_odd.view(c // 2, c, 1, 1), stride=2)], dim=1)


def _inputs(g: int = 3, c: int = 4, h: int = 6, dtype: torch.dtype = torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    x = torch.randn(2, g * c, h, h, device=DEVICE, dtype=dtype)
    weights = [torch.randn(g * c // 2, c, device=DEVICE) for _ in range(2)]
    base = torch.randn(2, g * c, h // 2, h // 2, device=DEVICE, dtype=dtype)
    return x, weights, base


def _grads(fn, x, weights, base, dy):
    leaves = [t.detach().requires_grad_() for t in (x, *weights, base)]
    y = fn(leaves[0], leaves[1], leaves[2], leaves[3])
    return (y, *torch.autograd.grad(y, leaves, dy))


def test_reducing_slots_run_the_modules_reduce_and_the_others_pass_base():
    g, c = 3, 4
    x, weights, base = _inputs(g, c)
    reduce = torch.tensor([1, 0, 1], device=DEVICE)
    dy = torch.randn_like(base)

    def expected(x, w_even, w_odd, base):
        slots = []
        for s in range(g):
            rows = slice(s * c, (s + 1) * c)
            half = slice(s * c // 2, (s + 1) * c // 2)
            slots.append(_module(x[:, rows], w_even[half], w_odd[half]) if reduce[s] else base[:, rows])
        return torch.cat(slots, dim=1)

    got = _grads(lambda x, we, wo, b: sampled_reduce(x, reduce, we, wo, b), x, weights, base, dy)
    want = _grads(expected, x, weights, base, dy)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[0][:, c:2 * c], base[:, c:2 * c])  # copied, not recomputed
    assert torch.equal(got[1][:, c:2 * c], torch.zeros_like(x[:, c:2 * c]))
    assert torch.equal(got[2][c // 2:c], torch.zeros_like(weights[0][c // 2:c]))  # a passing slot's weights
    assert torch.equal(got[4][:, :c], torch.zeros_like(dy[:, :c]))  # a reducing slot's base is unused
    assert torch.equal(got[4][:, c:2 * c], dy[:, c:2 * c])


def test_no_weight_gradient_is_computed_when_none_is_asked_for():
    """An arch step's weights are detached: the backward writes no weight gradient (and fills nothing), with the
    same input gradient."""
    x, weights, base = _inputs()
    reduce = torch.tensor([0, 1, 1], device=DEVICE)
    dy = torch.randn_like(base)
    dx, dbase, grads = torch.ops.sswp_fast.sampled_reduce_backward(dy, x, reduce, *weights, False, None)
    full = torch.ops.sswp_fast.sampled_reduce_backward(dy, x, reduce, *weights, True, None)
    assert grads.numel() == 0 and full[2].abs().sum() > 0
    assert torch.equal(dx, full[0]) and torch.equal(dbase, full[1])
    leaf = x.detach().requires_grad_()
    (only_dx,) = torch.autograd.grad(sampled_reduce(leaf, reduce, *weights, base), leaf, dy)
    assert torch.equal(only_dx, dx)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_match_the_reference(dtype):
    """fp64 is computed in fp32 by the kernels (as :mod:`.dwpw`); bf16 activations with fp32 weights, accumulated
    in fp32 and rounded once (a bf16 reference rounds each product)."""
    x, weights, base = _inputs(dtype=dtype, seed=1)
    reduce = torch.tensor([1, 1, 0], device=DEVICE)
    dy = torch.randn_like(base)
    got = _grads(lambda x, we, wo, b: sampled_reduce(x, reduce, we, wo, b), x, weights, base, dy)
    want = _grads(lambda x, we, wo, b: sampled_reduce_reference(x, reduce, we, wo, b), x, weights, base, dy)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float64 else dict(rtol=2e-2, atol=5e-2)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, **tol)


def test_the_reference_and_the_op_outside_the_interpreter_agree_with_the_kernels(monkeypatch):
    """On CPU tensors without the interpreter the op runs its PyTorch reference: the same values and gradients,
    and no host read of the flags."""
    x, weights, base = _inputs(seed=2)
    reduce = torch.tensor([0, 1, 0], device=DEVICE)
    dy = torch.randn_like(base)
    kernels = _grads(lambda x, we, wo, b: sampled_reduce(x, reduce, we, wo, b), x, weights, base, dy)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reference = _grads(lambda x, we, wo, b: sampled_reduce(x, reduce, we, wo, b), x.cpu(),
                       [w.cpu() for w in weights], base.cpu(), dy.cpu())
    for a, b in zip(kernels, reference, strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-5)


def test_bad_shapes_are_refused_in_one_line():
    x, weights, base = _inputs()
    with pytest.raises(ValueError, match="even"):
        sampled_reduce(x[:, :, :5, :5], torch.ones(3, dtype=torch.int64, device=DEVICE), *weights, base)
    with pytest.raises(ValueError, match="base must be"):
        sampled_reduce(x, torch.ones(3, dtype=torch.int64, device=DEVICE), *weights, base[:, :, :2])


def test_opcheck():
    x, weights, base = _inputs(g=2, c=2, h=4)
    reduce = torch.tensor([1, 0], device=DEVICE)
    args = (x.requires_grad_(), reduce, *(w.requires_grad_() for w in weights), base.requires_grad_(), None)
    torch.library.opcheck(torch.ops.sswp_fast.sampled_reduce.default, args)


def test_reduce_kernels_compile_for_sm90(tmp_path):
    compiles_for_sm90(tmp_path, "sswp_fast.kernels.sampled_reduce",
                      {"_reduce_fwd_kernel": {}, "_reduce_bwd_kernel": {"WEIGHT_GRADS": True}},
                      ("fp32", "bf16"), {"BLOCK_P": 32, "BLOCK_C": 16}, ints=("reduce_ptr",),
                      fp32=("we_ptr", "wo_ptr", "dwe_ptr", "dwo_ptr"))


def test_a_shared_gradient_buffer_takes_the_weight_gradients_without_a_fill():
    """As :func:`sampled_dwpw`'s: the weight gradients added into ``grad_out`` (views of it), the same values, no
    fill; a second backward pass of the graph gets fresh ones."""
    x, weights, base = _inputs(seed=3)
    reduce = torch.tensor([1, 0, 1], device=DEVICE)
    dy = torch.randn_like(base)
    plain = _grads(lambda x, we, wo, b: sampled_reduce(x, reduce, we, wo, b), x, weights, base, dy)[1:]
    buffer = torch.zeros(2 * weights[0].numel(), device=DEVICE)
    leaves = [t.detach().requires_grad_() for t in (x, *weights, base)]
    y = sampled_reduce(leaves[0], reduce, *leaves[1:], grad_out=buffer)
    with _Fills() as fills:
        shared = torch.autograd.grad(y, leaves, dy, retain_graph=True)
    assert fills.calls == []
    for a, b in zip(shared, plain, strict=True):
        torch.testing.assert_close(a, b)
    assert shared[1].untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()
    for a, b in zip(torch.autograd.grad(y, leaves, dy), plain, strict=True):
        torch.testing.assert_close(a, b)


class _Fills(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.zeros, torch.ops.aten.fill_, torch.ops.aten.zero_):
            self.calls.append(str(func))
        return func(*args, **(kwargs or {}))
