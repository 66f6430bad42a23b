"""The compiled InfoNCE op (csrc/) against the §1.3 formula: values, gradients, precision, custom-op contract."""

from __future__ import annotations

import warnings

import pytest
import torch

from sswp_fast import compiled, losses
from sswp_fast.losses import info_nce, info_nce_formula, info_nce_topk, info_nce_with_topk

pytestmark = pytest.mark.skipif(not compiled.available(), reason="sswp_fast._C was not built")

GRID = [(n, d) for n in (1, 2, 3, 96, 500) for d in (1, 7, 128, 300)]


@pytest.mark.parametrize(("n", "d"), GRID)
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_fp32_value_and_gradient_equal_the_formula(n: int, d: int, temperature: float, one_torch_thread) -> None:
    features = torch.randn(2 * n, d, requires_grad=True)
    truth_in = features.detach().double().requires_grad_()
    truth = info_nce_formula(truth_in, temperature)
    (truth_grad,) = torch.autograd.grad(truth, truth_in)
    loss = info_nce(features, temperature)
    (grad,) = torch.autograd.grad(loss, features)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), truth, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), truth_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.01, 0.004])
def test_tiny_temperatures_take_the_overflow_safe_path(temperature: float) -> None:
    features = torch.randn(64, 16, requires_grad=True)
    truth_in = features.detach().double().requires_grad_()
    truth = info_nce_formula(truth_in, temperature)
    (truth_grad,) = torch.autograd.grad(truth, truth_in)
    loss = info_nce(features, temperature)
    (grad,) = torch.autograd.grad(loss, features)
    torch.testing.assert_close(loss.double(), truth, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad.double(), truth_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("n", "d", "temperature"), [(1, 1, 0.07), (2, 3, 0.5), (3, 7, 0.07), (5, 4, 0.5)])
def test_fp64_gradcheck(n: int, d: int, temperature: float) -> None:
    features = torch.randn(2 * n, d, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: info_nce(x, temperature), (features,))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("n", "d"), [(3, 7), (96, 128), (500, 300)])
def test_low_precision_no_worse_than_twice_the_formula_in_that_precision(dtype, n: int, d: int,
                                                                          one_torch_thread) -> None:
    base = torch.randn(2 * n, d)
    x = base.to(dtype)
    truth_in = x.double().requires_grad_()
    truth = info_nce_formula(truth_in, 0.07)
    (truth_grad,) = torch.autograd.grad(truth, truth_in)
    ours_in = x.clone().requires_grad_()
    ours = info_nce(ours_in, 0.07)
    (ours_grad,) = torch.autograd.grad(ours, ours_in)
    ref_in = x.clone().requires_grad_()
    ref = info_nce_formula(ref_in, 0.07).to(dtype)  # the formula, computed from inputs of that dtype
    (ref_grad,) = torch.autograd.grad(ref, ref_in)
    assert ours.dtype == dtype and ours_grad.dtype == dtype
    loss_err, ref_loss_err = (ours.double() - truth).abs(), (ref.double() - truth).abs()
    grad_err, ref_grad_err = (ours_grad.double() - truth_grad).abs().max(), (ref_grad.double() - truth_grad).abs().max()
    assert loss_err <= 2 * ref_loss_err + 1e-6
    assert grad_err <= 2 * ref_grad_err + 1e-6


def test_topk_hits_equal_the_formula() -> None:
    features = torch.randn(64, 16)
    loss, top1, top5 = info_nce_with_topk(features, 0.2)
    expected1, expected5 = info_nce_topk(features)
    torch.testing.assert_close(top1, expected1)
    torch.testing.assert_close(top5, expected5)
    torch.testing.assert_close(loss, info_nce_formula(features, 0.2))


@pytest.mark.parametrize(("features", "message"), [
    (torch.randn(5, 3), "even number"),
    (torch.randn(4, 3, 2), r"\[2N, D\]"),
    (torch.ones(4, 3, dtype=torch.long), "floating"),
])
def test_bad_input_is_rejected(features: torch.Tensor, message: str) -> None:
    with pytest.raises((ValueError, RuntimeError), match=message):
        info_nce(features)
    with pytest.raises(RuntimeError):
        torch.ops.sswp_fast.info_nce_forward(features, 0.1)


def test_non_positive_temperature_is_rejected() -> None:
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.randn(4, 3), 0.0)
    with pytest.raises(RuntimeError, match="temperature"):
        torch.ops.sswp_fast.info_nce_forward(torch.randn(4, 3), -1.0)


def test_opcheck_and_compile_without_graph_break() -> None:
    features = torch.randn(8, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.sswp_fast.info_nce_forward.default, (features, 0.5))
    torch._dynamo.reset()
    compiled_loss = torch.compile(lambda x: info_nce(x, 0.1) * 2, fullgraph=True)
    value = compiled_loss(features)
    torch.testing.assert_close(value, 2 * info_nce_formula(features, 0.1))
    value.backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()


def test_fallback_warns_once_when_the_extension_is_missing(monkeypatch) -> None:
    monkeypatch.setattr(compiled, "available", lambda: False)
    losses._warn_fallback.cache_clear()
    features = torch.randn(6, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = info_nce(features)
        info_nce(features)
    assert sum("compiled ops" in str(w.message) for w in caught) == 1
    torch.testing.assert_close(first, info_nce_formula(features))
    losses._warn_fallback.cache_clear()


def test_doctor_reports_the_built_backends(capsys) -> None:
    from sswp_fast.cli import main

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "C++ InfoNCE op (CPU)   built, active on CPU tensors" in out
    assert "CUDA InfoNCE op" in out and "device" in out
