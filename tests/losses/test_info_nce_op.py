"""The compiled InfoNCE op (csrc/) against the §1.3 formula: values, gradients, precision, memory and the custom-op
contract, on CPU and, where a GPU exists, on CUDA (those cases skip with a reason elsewhere)."""

from __future__ import annotations

import os
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F

from sswp_fast.losses import compiled_op as compiled
from sswp_fast.losses import objectives as losses
from sswp_fast.losses.objectives import info_nce, info_nce_formula, info_nce_topk, info_nce_with_topk

pytestmark = pytest.mark.skipif(not compiled.available(), reason="sswp_fast._C was not built")

GRID = [(n, d) for n in (1, 2, 3, 96, 500) for d in (1, 7, 128, 300)]
ON_GPU = "the CUDA kernels are compiled here but run only on a GPU machine"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu(reason=ON_GPU))]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    if request.param == "cuda" and not compiled.available("cuda"):
        pytest.fail("a GPU is present but sswp_fast._C_cuda was not built: install with nvcc on PATH")
    return request.param


def truth_of(features: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The formula's loss and gradient in fp64, from exactly the given input values."""
    x = features.detach().double().requires_grad_()
    loss = info_nce_formula(x, temperature)
    return loss, torch.autograd.grad(loss, x)[0]


def op_of(features: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    x = features.detach().clone().requires_grad_()
    loss = info_nce(x, temperature)
    return loss, torch.autograd.grad(loss, x)[0]


def formula_in_dtype(features: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch computing the formula in the features' own dtype (normalise, GEMM, mask, cross-entropy)."""
    x = features.detach().clone().requires_grad_()
    rows = x.shape[0]
    z = F.normalize(x, dim=1)
    logits = (z @ z.t() / temperature).masked_fill(torch.eye(rows, dtype=torch.bool, device=x.device),
                                                   float("-inf"))
    loss = F.cross_entropy(logits, torch.arange(rows, device=x.device).roll(rows // 2))
    return loss, torch.autograd.grad(loss, x)[0]


@pytest.mark.parametrize(("n", "d"), GRID)
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_fp32_value_and_gradient_equal_the_formula(n: int, d: int, temperature: float, device: str,
                                                   one_torch_thread) -> None:
    features = torch.randn(2 * n, d, device=device)
    truth, truth_grad = truth_of(features, temperature)
    loss, grad = op_of(features, temperature)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), truth, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), truth_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.01, 0.004])
def test_tiny_temperatures_take_the_overflow_safe_path(temperature: float, device: str) -> None:
    features = torch.randn(64, 16, device=device)
    truth, truth_grad = truth_of(features, temperature)
    loss, grad = op_of(features, temperature)
    torch.testing.assert_close(loss.double(), truth, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad.double(), truth_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("n", "d", "temperature"), [(1, 1, 0.07), (2, 3, 0.5), (3, 7, 0.07), (5, 4, 0.5)])
def test_fp64_gradcheck(n: int, d: int, temperature: float, device: str) -> None:
    features = torch.randn(2 * n, d, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: info_nce(x, temperature), (features,))


def test_rows_below_the_normalisation_eps_follow_f_normalize(device: str) -> None:
    """F.normalize divides by max(||f||, eps): a zero row (and a tiny one) gets gradient g / eps, not NaN."""
    features = torch.randn(8, 5, dtype=torch.float64, device=device)
    features[2] = 0
    features[5] = 1e-14
    truth, truth_grad = truth_of(features, 0.5)
    loss, grad = op_of(features, 0.5)
    torch.testing.assert_close(loss, truth)
    torch.testing.assert_close(grad, truth_grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("n", "d"), [(3, 7), (96, 128), (500, 300)])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_low_precision_no_worse_than_twice_the_formula_in_that_precision(dtype, n: int, d: int,
                                                                          temperature: float, device: str,
                                                                          one_torch_thread) -> None:
    x = torch.randn(2 * n, d, device=device).to(dtype)
    truth, truth_grad = truth_of(x, temperature)
    ours, ours_grad = op_of(x, temperature)
    ref, ref_grad = formula_in_dtype(x, temperature)
    assert ours.dtype == dtype and ours_grad.dtype == dtype
    assert (ours.double() - truth).abs() <= 2 * (ref.double() - truth).abs() + 1e-6
    assert (ours_grad.double() - truth_grad).abs().max() <= 2 * (ref_grad.double() - truth_grad).abs().max() + 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_low_precision_accumulates_like_fp32(dtype, one_torch_thread) -> None:
    """On CPU the op computes in fp32 from the rounded inputs: as close as the fp32 formula on those inputs."""
    x = torch.randn(192, 128).to(dtype)
    truth, truth_grad = truth_of(x, 0.07)
    ours, ours_grad = op_of(x, 0.07)
    ref, ref_grad = op_of(x.float(), 0.07)
    torch.testing.assert_close(ours.double(), ref.double().to(dtype).double(), rtol=0, atol=0)
    torch.testing.assert_close(ours_grad.double(), ref_grad.to(dtype).double(), rtol=0, atol=0)
    torch.testing.assert_close(ref.double(), truth, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref_grad.double(), truth_grad, rtol=1e-5, atol=1e-5)


def test_topk_hits_equal_the_formula(device: str) -> None:
    features = torch.randn(64, 16, device=device)
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
def test_bad_input_is_rejected(features: torch.Tensor, message: str, device: str) -> None:
    features = features.to(device)
    with pytest.raises((ValueError, RuntimeError), match=message):
        info_nce(features)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.sswp_fast.info_nce_forward(features, 0.1)


def test_non_positive_temperature_is_rejected(device: str) -> None:
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.randn(4, 3, device=device), 0.0)
    with pytest.raises(RuntimeError, match="temperature"):
        torch.ops.sswp_fast.info_nce_forward(torch.randn(4, 3, device=device), -1.0)


def test_saved_values_of_the_wrong_shape_are_rejected(device: str) -> None:
    features = torch.randn(6, 4, device=device)
    _, lse, _ = torch.ops.sswp_fast.info_nce_forward(features, 0.1)
    with pytest.raises(RuntimeError, match="one value per feature row"):
        torch.ops.sswp_fast.info_nce_backward(torch.ones((), device=device), features, lse[:4], 0.1)


@pytest.mark.gpu(reason=ON_GPU)
def test_mismatched_devices_are_rejected() -> None:
    features = torch.randn(6, 4, device="cuda")
    _, lse, _ = torch.ops.sswp_fast.info_nce_forward(features, 0.1)
    with pytest.raises(RuntimeError, match="pass both on one device"):
        torch.ops.sswp_fast.info_nce_backward(torch.ones((), device="cuda"), features, lse.cpu(), 0.1)


def test_opcheck_and_compile_without_graph_break(device: str) -> None:
    features = torch.randn(8, 5, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.sswp_fast.info_nce_forward.default, (features, 0.5))
    torch._dynamo.reset()
    compiled_loss = torch.compile(lambda x: info_nce(x, 0.1) * 2, fullgraph=True)
    value = compiled_loss(features)
    torch.testing.assert_close(value, 2 * info_nce_formula(features, 0.1))
    value.backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()


@pytest.mark.gpu(reason=ON_GPU)
def test_cuda_memory_stays_linear_in_the_batch() -> None:
    """2N = 16384, D = 128: forward + backward allocate tens of MB where the 2N x 2N matrix alone is 1 GiB."""
    features = torch.randn(16384, 128, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    info_nce(features, 0.07).backward()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - before < 100 * 2**20


def test_cuda_kernels_are_built_where_the_toolchain_allows() -> None:
    """CI has nvcc and a CUDA build of torch: `pip install` must have compiled and linked the CUDA kernels."""
    if os.environ.get("SSWP_FAST_CUDA") == "0":
        pytest.skip("SSWP_FAST_CUDA=0 turned the CUDA build off")
    if torch.version.cuda is None or not (shutil.which("nvcc") or os.environ.get("CUDA_HOME")):
        pytest.skip("this torch has no CUDA or no nvcc is found: the CUDA extension is not built here")
    assert compiled.available("cuda"), "torch has CUDA and nvcc is present, but sswp_fast._C_cuda is missing"


def test_fallback_warns_once_when_the_extension_is_missing(monkeypatch) -> None:
    monkeypatch.setattr(compiled, "available", lambda device_type="cpu": False)
    losses._warn_fallback.cache_clear()
    features = torch.randn(6, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = info_nce(features)
        info_nce(features)
    assert sum("without the compiled InfoNCE op for cpu" in str(w.message) for w in caught) == 1
    torch.testing.assert_close(first, info_nce_formula(features))
    losses._warn_fallback.cache_clear()


def test_doctor_reports_the_built_backends(capsys) -> None:
    from sswp_fast.cli import main

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "C++ InfoNCE op (CPU)   built, active on CPU tensors" in out
    cuda_line = "built, active on CUDA tensors" if torch.cuda.is_available() else "built, idle (no CUDA device here)"
    assert (f"CUDA InfoNCE op        {cuda_line}" in out) == compiled.available("cuda")
    assert "device" in out
