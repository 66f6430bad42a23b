"""The slotted, device-dispatched ReLU → depthwise → pointwise kernels (``sswp_fast.kernels.sampled_dwpw``).

One launch runs every slot of a group through the variant its device-side index selects; compared, slot by
slot, with the plain PyTorch reference at fp64 (output, input gradient and every bank's gradient, zero rows
for the variants a slot did not run). Interpreter on CPU (tests/conftest.py), so shapes are small.
"""

from __future__ import annotations

import pytest
import torch

from sswp_fast.kernels import dwpw
from sswp_fast.kernels import sampled_dwpw as sd
from sswp_fast.kernels.sampled_dwpw import Variant, sampled_dwpw, sampled_dwpw_reference

from _support.kernel_compile import compiles_for_sm90
from _support.sampled_banks import DEVICE, FIRST_HALVES, SECOND_HALVES, make


def run(fn, x, chosen, stride, variants, banks, dy, dtype=None):
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in (x, *banks)]
    y = fn(leaves[0], chosen, stride, variants, *leaves[1:])
    grads = torch.autograd.grad(y, leaves, dy.to(y.dtype), allow_unused=True, materialize_grads=True)
    return y, grads


@pytest.mark.parametrize("stride,h,w", [(1, 7, 7), (2, 8, 8), (2, 7, 6)])
@pytest.mark.parametrize("variants,chosen", [
    pytest.param(FIRST_HALVES, [2, -1, 0, 3, 1], id="first-halves"),
    pytest.param(SECOND_HALVES, [1, -1, 0], id="second-halves"),
])
def test_every_slot_runs_its_variant(variants, chosen, stride, h, w):
    c = 5  # not a power of two
    chosen = torch.tensor(chosen, device=DEVICE)
    x, banks = make(variants, len(chosen), c, h, w)
    dy = torch.randn_like(sampled_dwpw_reference(x, chosen, stride, variants, *banks))
    y, grads = run(sampled_dwpw, x, chosen, stride, variants, banks, dy)
    y_ref, grads_ref = run(sampled_dwpw_reference, x, chosen, stride, variants, banks, dy.double(), torch.float64)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    for i, (a, b) in enumerate(zip(grads, grads_ref, strict=True)):
        assert a.shape == b.shape, i
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4, msg=f"gradient {i}")
    slots_off = (chosen < 0).nonzero().flatten().tolist()
    assert all(y.view(2, len(chosen), c, *y.shape[2:])[:, g].abs().max() == 0 for g in slots_off)
    for v, (g_dw, g_pw) in enumerate(zip(grads[1::2], grads[2::2], strict=True)):
        unused = (chosen != v).nonzero().flatten()
        assert g_dw[unused].abs().max() == 0 and g_pw[unused].abs().max() == 0, f"variant {v} rows of other slots"


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_pytorch_kernel_of_the_op_outside_the_interpreter(monkeypatch, layout):
    """CPU tensors without the interpreter take the op's PyTorch kernel (explicit convolution gradients, as a
    custom op's kernel runs below autograd): equal to the reference, and consistent with the op's fake kernel,
    schema and autograd registration (``torch.library.opcheck``), channels-last inputs included."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    torch.manual_seed(0)
    x, banks = make(FIRST_HALVES, 5, 3, 8, 8, dtype=torch.float64, n=2)
    x = x.cpu().contiguous(memory_format=layout)
    banks = [b.cpu() for b in banks]
    chosen = torch.tensor([2, -1, 0, 3, 1])
    dy = torch.randn(2, 15, 4, 4, dtype=torch.float64)
    ours = run(sampled_dwpw, x, chosen, 2, FIRST_HALVES, banks, dy)
    ref = run(sampled_dwpw_reference, x, chosen, 2, FIRST_HALVES, banks, dy)
    for a, b in zip((ours[0], *ours[1]), (ref[0], *ref[1]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    flat = [value for v in FIRST_HALVES for value in v]
    torch.library.opcheck(torch.ops.sswp_fast.sampled_dwpw.default,
                          (x.requires_grad_(), chosen, 2, flat, [b.requires_grad_() for b in banks], None, None))


@pytest.mark.parametrize("interpreted", [True, False], ids=["kernels", "pytorch-kernel"])
def test_detached_banks_get_no_weight_gradient_and_the_same_input_gradient(monkeypatch, interpreted):
    """An arch step differentiates the gates only, so its banks are detached: the backward op is then asked for
    no weight gradient (the kernel skips them, and the flat buffer's fill) and gives the same ``dx``."""
    monkeypatch.setenv("TRITON_INTERPRET", "1" if interpreted else "0")
    device = DEVICE if interpreted else "cpu"
    torch.manual_seed(4)
    x, banks = make(FIRST_HALVES, 3, 4, 6, 6)
    x, banks = x.to(device), [b.to(device) for b in banks]
    chosen = torch.tensor([1, -1, 3], device=device)
    dy = torch.randn(2, 12, 3, 3, device=device)
    _, (dx, *_) = run(sampled_dwpw, x, chosen, 2, FIRST_HALVES, banks, dy)
    calls = []
    backward = torch.ops.sswp_fast.sampled_dwpw_backward

    class Calls(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket is backward:
                calls.append((args[6], out[1].numel()))
            return out

    masks = []  # the PyTorch kernel's convolution gradients: which it computes
    convolution_backward = torch.ops.aten.convolution_backward
    monkeypatch.setattr(torch.ops.aten, "convolution_backward",
                        lambda *args: masks.append(args[-1]) or convolution_backward(*args))
    leaf = x.detach().requires_grad_()
    before = [b.clone() for b in banks]
    with Calls():
        y = sampled_dwpw(leaf, chosen, 2, FIRST_HALVES, *banks)  # banks that need no gradient
        (dx_alone,) = torch.autograd.grad(y, leaf, dy)
    assert calls == [(False, 0)], "asked for no weight gradient, none computed"
    assert all(not mask[1] for mask in masks) and len(masks) == (0 if interpreted else 4)
    torch.testing.assert_close(dx_alone, dx, rtol=0, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(banks, before, strict=True)), "nothing written into the banks"


def test_one_compiled_kernel_serves_every_assignment():
    """The launch does not depend on the indices: the same inputs with the indices permuted give the permuted
    slots (what replaying one captured graph with new indices relies on)."""
    c, variants = 4, FIRST_HALVES
    x, banks = make(variants, 4, c, 6, 6)
    a = torch.tensor([0, 1, 2, 3], device=DEVICE)
    b = torch.tensor([3, 2, 1, 0], device=DEVICE)
    for chosen in (a, b):
        torch.testing.assert_close(sampled_dwpw(x, chosen, 1, variants, *banks),
                                   sampled_dwpw_reference(x, chosen, 1, variants, *banks), rtol=1e-4, atol=1e-5)


def test_bf16_error_is_no_worse_than_twice_pytorchs():
    c, stride, variants = 6, 1, FIRST_HALVES
    chosen = torch.tensor([3, 0, 2], device=DEVICE)
    x, banks = make(variants, 3, c, 6, 6)
    truth = sampled_dwpw_reference(x.double(), chosen, stride, variants, *(b.double() for b in banks))
    ours = sampled_dwpw(x.bfloat16(), chosen, stride, variants, *(b.bfloat16() for b in banks))
    theirs = sampled_dwpw_reference(x.bfloat16(), chosen, stride, variants, *(b.bfloat16() for b in banks))
    assert ours.dtype == torch.bfloat16
    assert (ours.double() - truth).abs().max() <= 2 * (theirs.double() - truth).abs().max()


@pytest.mark.parametrize("change,message", [
    (lambda a: {**a, "variants": FIRST_HALVES + FIRST_HALVES[:1]}, "1 to 4 variants"),
    (lambda a: {**a, "banks": a["banks"][:-1]}, "bank pair per variant"),
    (lambda a: {**a, "chosen": a["chosen"].float()}, "int32/int64"),
    (lambda a: {**a, "x": a["x"][:, :-1]}, "not a multiple"),
    (lambda a: {**a, "variants": (Variant(3, 1, 1), Variant(3, 0, 1))}, "different output sizes"),
    (lambda a: {**a, "banks": [a["banks"][0][:, :, :, :2, :2], *a["banks"][1:]]}, "w_dw bank must be"),
])
def test_bad_arguments_are_named(change, message):
    x, banks = make(SECOND_HALVES, 2, 4, 6, 6)
    args = change({"x": x, "chosen": torch.tensor([0, 1], device=DEVICE), "variants": SECOND_HALVES,
                   "banks": banks})
    with pytest.raises(ValueError, match=message):
        sampled_dwpw(args["x"], args["chosen"], 1, args["variants"], *args["banks"])


@pytest.mark.slow(seconds=110)
def test_sampled_kernels_compile_for_sm90(tmp_path):
    """Compile-only check (no GPU needed): the branchy forward kernel with all four variants and both pools at the
    widest CIFAR search shape (C = 144, the last reduction: the most registers), fp32 (what the device executor
    runs) to an sm_90 cubin (H100/H200), without TRITON_INTERPRET (about 80 s: every branch unrolls its taps), the
    arch step's backward kernel without weight gradients (a few seconds) and the input-gradient kernel with the
    pools' backward and the idle slots' given gradient (about 30 s). The weight-step part-1 kernel, with the same
    branches as the forward, was cut from CI for time; the dwpw tile functions it calls are compiled alone, fp32
    and bf16 (what ``--amp bf16`` runs), by tests/test_kernels_dwpw.py."""
    c, size, stride = 144, 16, 2
    out = (size - 1) // stride + 1
    b = dwpw.block_sizes(out, out, size, size, c, c, stride, False)
    tile = {"BLOCK_P": b.p, "BLOCK_W": b.pw, "BLOCK_CO": b.co, "DOT_PRECISION": "ieee"}
    kernels = {"_sampled_fwd_kernel": {**tile, "HAS_POOL": True},
               "_sampled_bwd_act_kernel": {**tile, "WEIGHT_GRADS": False},  # an arch step's: no taps, no atomics
               "_sampled_bwd_dx_kernel": {"BLOCK_Q": b.q, "BLOCK_W": b.qw, "HAS_POOL": True, "HAS_IDLE": True}}
    weights = [f"{kind}{i}" for kind in ("wdw", "wpw", "gwdw", "gwpw") for i in range(sd.MAX_VARIANTS)]
    compiles_for_sm90(tmp_path, "sswp_fast.kernels.sampled_dwpw", kernels, ("fp32",),
                      {"STRIDE": stride, **sd._constants(FIRST_HALVES), "BLOCK_C": b.c},
                      ints=("var_ptr", "pool_ptr"), fp32=(*weights, "g_ptr"))


def test_a_shared_gradient_buffer_takes_the_bank_gradients_without_a_fill():
    """Given ``grad_out`` (zero, the banks' total size) the backward pass adds the bank gradients into it and fills
    nothing of its own; the gradients are those of a run without it, and views of the buffer. A second backward
    pass of the same graph gets fresh gradients, not the buffer's doubled ones."""
    torch.manual_seed(6)
    x, banks = make(FIRST_HALVES, 3, 4, 6, 6)
    chosen = torch.tensor([1, -1, 3], device=DEVICE)
    dy = torch.randn(2, 12, 6, 6, device=DEVICE)
    _, plain = run(sampled_dwpw, x, chosen, 1, FIRST_HALVES, banks, dy)
    buffer = torch.zeros(sum(b.numel() for b in banks), device=DEVICE)
    leaves = [t.detach().requires_grad_() for t in (x, *banks)]
    y = sampled_dwpw(leaves[0], chosen, 1, FIRST_HALVES, *leaves[1:], grad_out=buffer)
    fills = []

    class Fills(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            fills.extend([str(func)] if func.overloadpacket in (torch.ops.aten.zeros, torch.ops.aten.fill_) else [])
            return func(*args, **(kwargs or {}))

    with Fills():
        shared = torch.autograd.grad(y, leaves, dy, retain_graph=True)
    assert fills == []
    for a, b in zip(shared, plain, strict=True):
        torch.testing.assert_close(a, b)
    assert shared[1].untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()
    again = torch.autograd.grad(y, leaves, dy)
    for a, b in zip(again, plain, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("interpreted", [True, False], ids=["kernels", "pytorch-kernel"])
def test_idle_slots_take_the_given_input_gradient(monkeypatch, interpreted):
    """``idle_dx``: the slots that run neither a convolution nor a pool get their part of it as ``dx`` (what a
    slot group's input gets from its skip or factorized reduce), written by the input-gradient launch; the other
    slots' ``dx`` and every weight gradient are those of a backward pass without it. The op's schema and fake
    kernel take it (``opcheck``)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1" if interpreted else "0")
    device = DEVICE if interpreted else "cpu"
    torch.manual_seed(7)
    x, banks = make(FIRST_HALVES, 5, 3, 6, 6)
    x, banks = x.to(device), [b.to(device) for b in banks]
    chosen = torch.tensor([2, -1, 0, -1, 1], device=device)
    pool = torch.tensor([-1, 0, -1, -1, -1], device=device)  # slot 1 a max pool, slot 3 idle
    dy, idle = torch.randn(2, 15, 6, 6, device=device), torch.randn_like(x)
    flat = [value for v in FIRST_HALVES for value in v]
    backward = torch.ops.sswp_fast.sampled_dwpw_backward
    dx, grads = backward(dy, x, chosen, 1, flat, banks, True, None, pool)
    dx_idle, grads_idle = backward(dy, x, chosen, 1, flat, banks, True, None, pool, idle)
    expected = dx.clone()
    expected[:, 9:12] = idle[:, 9:12]
    assert dx[:, 9:12].abs().max() == 0
    torch.testing.assert_close(dx_idle, expected, rtol=0, atol=0)
    torch.testing.assert_close(grads_idle, grads, rtol=0, atol=0)
    if not interpreted:
        torch.library.opcheck(backward.default, (dy, x, chosen, 1, flat, banks, True, None, pool, idle))
