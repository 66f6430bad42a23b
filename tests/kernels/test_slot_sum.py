"""The node's sum over its slots (``sswp_fast.kernels.slot_sum``): each slot takes the source its op produced
(first stage, ``sep_conv`` second half, stride-1 skip, or nothing), scaled by an optional gate, summed.

Compared with the PyTorch reference (the selections, product and sum as autograd operations): forward, the three
routed gradients and the gate gradient, to float32 rounding (the reference sums the slots in its own order).
Interpreter on CPU (tests/conftest.py), so shapes are small.
"""

from __future__ import annotations

import pytest
import torch

from sswp_fast.kernels.slot_sum import FIRST, NONE, SECOND, SKIP, slot_sum, slot_sum_reference

from _support.kernel_compile import compiles_for_sm90

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _outputs_and_grads(fn, tensors: list[torch.Tensor | None], dout: torch.Tensor) -> list[torch.Tensor]:
    leaves = [None if t is None else t.detach().requires_grad_() for t in tensors]
    y = fn(*leaves)
    present = [t for t in leaves if t is not None]
    return [y, *torch.autograd.grad(y, present, dout)]


@pytest.mark.parametrize("skip,scale", [(True, False), (True, True), (False, False), (False, True)],
                         ids=["skip", "skip-gated", "stride2", "stride2-gated"])
def test_every_slot_takes_its_source(skip, scale):
    torch.manual_seed(0)
    n, c, h, w = 2, 3, 5, 4
    source = torch.tensor([FIRST, SECOND, SKIP if skip else FIRST, NONE, SECOND], device=DEVICE)
    g = source.shape[0]
    first, second, x = (torch.randn(n, g * c, h, w, device=DEVICE) for _ in range(3))
    gates = torch.rand(g, device=DEVICE) if scale else None
    dout = torch.randn(n, c, h, w, device=DEVICE)
    inputs = [first, second, x if skip else None, gates]

    def fn(reference):
        return lambda a, b, s, k: (slot_sum_reference if reference else slot_sum)(a, b, s, source, k)

    ours = _outputs_and_grads(fn(False), inputs, dout)
    reference = _outputs_and_grads(fn(True), inputs, dout)
    assert ours[0].shape == (n, c, h, w)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    dfirst = ours[1].view(n, g, c, h, w)
    assert not dfirst[:, 1].any() and not dfirst[:, 3].any(), "a slot that did not choose first gets no gradient"


def test_the_reference_and_the_op_outside_the_interpreter_agree_with_the_kernels(monkeypatch):
    """The op's PyTorch kernels, which CPU tensors take outside the interpreter (explicit gradients), in float64
    against the Triton kernels; the fake kernels, schema and autograd registration checked by
    ``torch.library.opcheck``."""
    torch.manual_seed(1)
    source = torch.tensor([SKIP, NONE, FIRST, SECOND], device=DEVICE)
    first, second, x = (torch.randn(2, 8, 3, 3, device=DEVICE) for _ in range(3))
    gates = torch.rand(4, device=DEVICE)
    dout = torch.randn(2, 2, 3, 3, device=DEVICE)
    kernels = _outputs_and_grads(lambda a, b, s, k: slot_sum(a, b, s, source, k), [first, second, x, gates], dout)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    cpu = [t.cpu().double() for t in (first, second, x, gates)]
    op = _outputs_and_grads(lambda a, b, s, k: slot_sum(a, b, s, source.cpu(), k), cpu, dout.cpu().double())
    for a, b in zip(kernels, op, strict=True):
        torch.testing.assert_close(b.float(), a.cpu(), rtol=1e-6, atol=1e-6)
    leaves = [t.requires_grad_() for t in cpu]
    torch.library.opcheck(torch.ops.sswp_fast.slot_sum.default, (*leaves[:3], source.cpu(), leaves[3], None))
    torch.library.opcheck(torch.ops.sswp_fast.slot_sum.default, (*leaves[:2], None, source.cpu(), None, None))


def test_without_a_gate_gradient_autograd_keeps_no_source():
    """Only the gate's gradient reads the sources; the routed gradients need ``dout`` alone, so nothing of the
    size of an activation is saved for the backward pass."""
    source = torch.tensor([FIRST, SECOND], device=DEVICE)
    first, second = (torch.randn(2, 4, 3, 3, device=DEVICE, requires_grad=True) for _ in range(2))
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = slot_sum(first, second, None, source, torch.ones(2, device=DEVICE))
    assert all(t.numel() <= 2 for t in saved), [t.shape for t in saved]
    y.sum().backward()
    assert first.grad.abs().sum() > 0


def test_bf16_sums_in_float32_and_rounds_once():
    torch.manual_seed(2)
    source = torch.tensor([FIRST, SECOND, SKIP], device=DEVICE)
    first, second, x = (torch.randn(2, 6, 4, 4, device=DEVICE).bfloat16() for _ in range(3))
    y = slot_sum(first, second, x, source)
    reference = slot_sum_reference(first.float(), second.float(), x.float(), source)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), reference, rtol=2**-8, atol=0)  # one rounding of the float32 sum


@pytest.mark.slow(seconds=20)
def test_slot_sum_kernels_compile_for_sm90(tmp_path):
    """Compile-only check (no GPU needed): both kernels, fp32 and bf16, to sm_90 cubins."""
    kernels = {"_slot_sum_fwd_kernel": {"HAS_SKIP": True, "HAS_SCALE": True, "HAS_BASE": True},
               "_slot_sum_bwd_kernel": {"HAS_SKIP": True, "HAS_SCALE": True, "SCALE_GRAD": True}}
    compiles_for_sm90(tmp_path, "sswp_fast.kernels.slot_sum", kernels, ("fp32", "bf16"),
                      {"BLOCK_P": 64, "BLOCK_R": 64}, ints=("source_ptr",), fp32=("partial_ptr", "scale_ptr"))


def test_a_base_is_added_in_the_same_launch_and_gets_the_outputs_gradient():
    """``base`` (another group's or path's part of the node) plus the gated sum, in one launch; ``base``'s
    gradient is ``dout`` itself, and the others' are as without it."""
    torch.manual_seed(3)
    source = torch.tensor([FIRST, SECOND, SKIP], device=DEVICE)
    first, second, skip = (torch.randn(2, 9, 4, 4, device=DEVICE) for _ in range(3))
    base, dout = torch.randn(2, 3, 4, 4, device=DEVICE), torch.randn(2, 3, 4, 4, device=DEVICE)
    gates = torch.tensor([1.0, 0.0, 1.0], device=DEVICE)
    leaves = [t.clone().requires_grad_() for t in (first, second, skip, gates, base)]
    y = slot_sum(*leaves[:3], source, leaves[3], leaves[4])
    grads = torch.autograd.grad(y, leaves, dout)
    plain = [t.clone().requires_grad_() for t in (first, second, skip, gates)]
    y_plain = slot_sum(*plain[:3], source, plain[3])
    torch.testing.assert_close(y, base + y_plain)
    for a, b in zip(grads[:4], torch.autograd.grad(y_plain, plain, dout), strict=True):
        torch.testing.assert_close(a, b)
    assert grads[4] is dout or torch.equal(grads[4], dout)
    torch.testing.assert_close(slot_sum_reference(first, second, skip, source, gates, base), y.detach())
