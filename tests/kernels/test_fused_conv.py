"""The Triton sep/dil convolutions (kernels/fused_conv.py) against the PyTorch modules of sswp_fast.search.space:
outputs, every gradient, BatchNorm running statistics, recompute mode and the switch between backends. On CPU these run
in the Triton interpreter (tests/conftest.py turns it on when CUDA is absent)."""

from __future__ import annotations

import copy

import pytest
import torch

from sswp_fast.kernels.fused_conv import fused_conv, fused_conv_reference
from sswp_fast.search.space import FusableConv, build_op, use_kernels

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CONVS = ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]


def pair(name: str, channels: int, stride: int, affine: bool) -> tuple[FusableConv, FusableConv]:
    """The same op twice (identical weights, non-trivial BN affine and running statistics): torch and triton."""
    ref = build_op(name, channels, stride, affine).to(DEVICE)
    with torch.no_grad():
        for module in ref.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                if affine:
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.5, 0.5)
    ours = copy.deepcopy(ref)
    use_kernels(ours, "triton")
    return ref, ours


def run(op: FusableConv, x: torch.Tensor, upstream: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    x = x.clone().requires_grad_()
    out = op(x)
    out.backward(upstream)
    return out.detach(), x.grad, {name: p.grad for name, p in op.named_parameters()}


def assert_same_run(ref: FusableConv, ours: FusableConv, x: torch.Tensor, tol: float = 1e-4) -> None:
    with torch.no_grad():
        upstream = torch.randn_like(ref(x))
    ref.load_state_dict(ours.state_dict())  # undo the probe forward's running-stat update
    ref_out, ref_dx, ref_grads = run(ref, x, upstream)
    out, dx, grads = run(ours, x, upstream)
    torch.testing.assert_close(out, ref_out, rtol=tol, atol=tol)
    torch.testing.assert_close(dx, ref_dx, rtol=tol, atol=tol)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=tol, atol=tol, msg=name)
    ref_state, state = ref.state_dict(), ours.state_dict()
    assert state.keys() == ref_state.keys()
    for key in state:
        torch.testing.assert_close(state[key], ref_state[key], rtol=tol, atol=tol, msg=key)


@pytest.mark.parametrize("name", CONVS)
@pytest.mark.parametrize(("stride", "size"), [(1, 7), (2, 8)])
def test_training_step_equals_the_pytorch_modules(name: str, stride: int, size: int) -> None:
    ref, ours = pair(name, 6, stride, affine=True)
    assert_same_run(ref, ours, torch.randn(2, 6, size, size, device=DEVICE))


@pytest.mark.parametrize("name", ["sep_conv_3x3", "dil_conv_5x5"])
def test_eval_mode_and_non_affine_batch_norms(name: str) -> None:
    ref, ours = pair(name, 5, 2, affine=False)
    ref.eval()
    ours.eval()
    assert_same_run(ref, ours, torch.randn(2, 5, 7, 7, device=DEVICE))


def test_recompute_saves_only_the_input_weights_and_statistics() -> None:
    _, ours = pair("sep_conv_3x3", 6, 1, affine=True)
    x = torch.randn(2, 6, 8, 8, device=DEVICE, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = ours(x)
    parameters = {p.data_ptr() for p in ours.parameters()}
    large = [tuple(t.shape) for t in saved if t.dim() > 1 and t.data_ptr() not in parameters]
    assert large == [tuple(x.shape)], f"saved activations besides the input: {large}"
    assert all(t.dim() > 1 or t.numel() == 6 for t in saved)
    kept_in = x.detach().clone().requires_grad_()
    kept = fused_conv(ours.halves(), kept_in, recompute=False)  # saves the activations instead
    torch.testing.assert_close(out, kept, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    kept.backward(upstream)
    torch.testing.assert_close(x.grad, kept_in.grad, rtol=1e-5, atol=1e-5)


def test_the_reference_path_is_the_modules_themselves() -> None:
    ref = build_op("dil_conv_3x3", 4, 1, True).to(DEVICE).eval()
    x = torch.randn(1, 4, 5, 5, device=DEVICE)
    torch.testing.assert_close(fused_conv_reference(ref.halves(), x), ref(x))
