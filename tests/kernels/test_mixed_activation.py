"""The mixed-activation kernels (``sswp_fast.kernels.mixed_activation``): ``Σ_k w_k act_k(x_k)`` and its backward.

The custom op ``sswp_fast::activate_and_mix`` against the PyTorch path of ``search_space.activate_and_mix`` (value,
block and weight gradients; fp64 to 1e-10, fp32 to 1e-5) with the K=7 mixes the MixedOp uses, inputs that put
points in every region of every activation (both sides of 0, exactly ±3 and beyond for hardswish); several programs
with a masked tail; ``torch.library.opcheck`` of both ops; the fake kernels' shapes and dtypes. Interpreter on CPU
(tests/conftest.py), so shapes are small.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from sswp_fast.kernels import mixed_activation as ma
from sswp_fast.nasiam import search_space
from sswp_fast.nasiam.search_space import MixedOp

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MIXES = {
    "same": ("identity", "identity", "identity", "relu", "silu", "hardswish", "elu"),  # simsiam/moco, in == out
    "down-simclr": ("identity", "identity", "relu", "relu", "hardswish", "silu", "elu"),  # simclr, in > out
    "up": ("identity",) * 7,  # in < out
}
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
EDGES = (-10.0, -3.5, -3.0, -2.999, -1e-3, 0.0, 1e-3, 2.999, 3.0, 3.5, 10.0)  # kinks, ±3 and beyond


def make(k: int = 7, n: int = 5, d: int = 13, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks [K, N, D], normal with std 3, starting with the edge values in every block; softmax weights."""
    blocks = torch.randn(k, n, d, dtype=torch.float64) * 3
    count = min(len(EDGES), n * d)
    blocks.view(k, -1)[:, :count] = torch.tensor(EDGES[:count], dtype=torch.float64)
    weights = torch.softmax(torch.randn(k, dtype=torch.float64), 0)
    return blocks.to(DEVICE, dtype), weights.to(DEVICE, dtype)


def reference(blocks: torch.Tensor, activations, weights: torch.Tensor, grad: torch.Tensor):
    """Value and gradients of ``search_space.activate_and_mix``'s PyTorch path (on CPU, so never the kernel)."""
    leaves = [b.detach().cpu().requires_grad_() for b in blocks]
    w = weights.detach().cpu().requires_grad_()
    y = search_space.activate_and_mix(leaves, activations, w)
    grads = torch.autograd.grad(y, [*leaves, w], grad.cpu())
    return y, torch.stack(grads[:-1]), grads[-1]


def through_op(blocks: torch.Tensor, activations, weights: torch.Tensor, grad: torch.Tensor):
    x = blocks.detach().requires_grad_()
    w = weights.detach().requires_grad_()
    y = ma.mixed_activation(x, activations, w)
    grad_x, grad_w = torch.autograd.grad(y, [x, w], grad)
    return y, grad_x, grad_w


def assert_all_close(ours, theirs, tol: float) -> None:
    for name, a, b in zip(("value", "grad_blocks", "grad_weights"), ours, theirs, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a.cpu(), b, rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("mix", MIXES, ids=list(MIXES))
def test_op_matches_pytorch_reference(mix, dtype):
    blocks, weights = make(dtype=dtype)
    grad = torch.randn(blocks.shape[1:], device=DEVICE, dtype=dtype)
    assert_all_close(through_op(blocks, MIXES[mix], weights, grad),
                     reference(blocks, MIXES[mix], weights, grad), TOL[dtype])


@pytest.mark.parametrize("block", [16, 64])
def test_several_programs_and_a_masked_tail(block):
    """5 x 13 = 65 elements: 5 programs of 16 (or 2 of 64) with a partial last one; the weight gradient is the
    sum of the programs' partial rows."""
    blocks, weights = make()
    grad = torch.randn(blocks.shape[1:], device=DEVICE, dtype=blocks.dtype)
    codes = [ma.ACTIVATION_CODES[a] for a in MIXES["same"]]
    ours = (ma.mixed_activation_forward(blocks, codes, weights, block=block),
            *ma.mixed_activation_backward(grad, blocks, codes, weights, block=block))
    assert_all_close(ours, reference(blocks, MIXES["same"], weights, grad), TOL[torch.float64])


def test_every_activation_alone_and_non_contiguous_inputs():
    """One block per activation (K = 5), blocks a transposed view, an expanded output gradient."""
    names = tuple(ma.ACTIVATION_CODES)
    blocks, weights = make(k=len(names), n=13, d=5)
    blocks = blocks.transpose(1, 2)
    assert not blocks.is_contiguous()
    grad = torch.randn(1, 13, device=DEVICE, dtype=blocks.dtype).expand(5, 13)
    assert_all_close(through_op(blocks, names, weights, grad), reference(blocks, names, weights, grad), 1e-10)


def test_mixed_dtypes_promote_like_pytorch():
    """fp32 blocks with fp64 weights: an fp64 output computed in fp64; each gradient in its input's dtype."""
    blocks, weights = make()
    blocks = blocks.float()
    grad = torch.randn(blocks.shape[1:], device=DEVICE, dtype=torch.float64)
    assert_all_close(through_op(blocks, MIXES["same"], weights, grad),
                     reference(blocks, MIXES["same"], weights, grad), 1e-6)


def test_bf16_error_is_no_worse_than_twice_pytorchs():
    blocks, weights = make()
    truth = reference(blocks, MIXES["same"], weights, torch.zeros(blocks.shape[1:], dtype=blocks.dtype))[0]
    low = blocks.bfloat16()
    ours = ma.mixed_activation(low, MIXES["same"], weights.bfloat16())
    theirs = search_space.activate_and_mix(list(low.cpu()), MIXES["same"], weights.bfloat16().cpu())
    assert ours.dtype == torch.bfloat16
    assert (ours.cpu().double() - truth).abs().max() <= 2 * (theirs.double() - truth).abs().max()


def test_opcheck_triton_kernels():
    """Schema, fake kernels, autograd registration and AOT dispatch of both ops, on the Triton kernels."""
    blocks, weights = make(n=3, d=4)
    codes = [ma.ACTIVATION_CODES[a] for a in MIXES["same"]]
    torch.library.opcheck(torch.ops.sswp_fast.activate_and_mix.default,
                          (blocks.requires_grad_(), codes, weights.requires_grad_()))
    grad = torch.randn(3, 4, device=DEVICE, dtype=blocks.dtype)
    torch.library.opcheck(torch.ops.sswp_fast.activate_and_mix_backward.default,
                          (grad, blocks.detach(), codes, weights.detach()))


def test_pytorch_kernels_of_the_ops_outside_the_interpreter(monkeypatch):
    """CPU tensors without the interpreter take the ops' PyTorch kernels (explicit derivatives): equal to the
    reference, and consistent with the fake kernels, schema and autograd registration."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    blocks, weights = make()
    blocks, weights = blocks.cpu(), weights.cpu()
    grad = torch.randn(blocks.shape[1:], dtype=blocks.dtype)
    assert_all_close(through_op(blocks, MIXES["same"], weights, grad),
                     reference(blocks, MIXES["same"], weights, grad), 1e-12)
    codes = [ma.ACTIVATION_CODES[a] for a in MIXES["same"]]
    torch.library.opcheck(torch.ops.sswp_fast.activate_and_mix.default,
                          (blocks.requires_grad_(), codes, weights.requires_grad_()))


@pytest.mark.parametrize(("blocks_dtype", "weights_dtype", "out_dtype"), [
    (torch.float32, torch.float32, torch.float32),
    (torch.float64, torch.float64, torch.float64),
    (torch.bfloat16, torch.float32, torch.float32),
    (torch.bfloat16, torch.bfloat16, torch.bfloat16),
])
def test_fake_kernels_give_shapes_and_dtypes(blocks_dtype, weights_dtype, out_dtype):
    with FakeTensorMode():
        blocks = torch.empty(7, 6, 40, dtype=blocks_dtype)
        weights = torch.empty(7, dtype=weights_dtype)
        y = torch.ops.sswp_fast.activate_and_mix(blocks, [0, 0, 0, 1, 2, 3, 4], weights)
        grad_blocks, grad_weights = torch.ops.sswp_fast.activate_and_mix_backward(
            torch.empty(6, 40, dtype=out_dtype), blocks, [0, 0, 0, 1, 2, 3, 4], weights)
    assert (y.shape, y.dtype) == ((6, 40), out_dtype)
    assert (grad_blocks.shape, grad_blocks.dtype) == ((7, 6, 40), blocks_dtype)
    assert (grad_weights.shape, grad_weights.dtype) == ((7,), weights_dtype)


@pytest.mark.parametrize(("change", "message"), [
    (lambda a: {**a, "blocks": a["blocks"][0]}, r"\[K, N, D\]"),
    (lambda a: {**a, "activations": a["activations"][:-1]}, "one activation code per block"),
    (lambda a: {**a, "activations": ("gelu",) * 7}, "unknown activations"),
    (lambda a: {**a, "weights": a["weights"][:-1]}, "weights must have shape"),
    (lambda a: {**a, "blocks": torch.zeros(17, 2, 2, device=DEVICE, dtype=torch.float64),
                "weights": torch.zeros(17, device=DEVICE, dtype=torch.float64),
                "activations": ("identity",) * 17}, "1 to 16 blocks"),
])
def test_bad_arguments_are_named(change, message):
    blocks, weights = make(n=2, d=3)
    args = change({"blocks": blocks, "activations": MIXES["same"], "weights": weights})
    with pytest.raises(ValueError, match=message):
        ma.mixed_activation(args["blocks"], args["activations"], args["weights"])


def test_cpu_tensors_keep_the_pytorch_path(monkeypatch):
    """``activate_and_mix`` sends CPU tensors to PyTorch even under the interpreter (far too slow for runs)."""
    monkeypatch.setattr(ma, "mixed_activation", lambda *args: pytest.fail("CPU tensors reached the kernel"))
    blocks, weights = make()
    search_space.activate_and_mix(list(blocks.cpu()), MIXES["same"], weights.cpu())


@pytest.mark.gpu(reason="the kernel path of activate_and_mix is CUDA-only")
def test_cuda_mixed_op_takes_the_kernel_and_matches_the_reference(monkeypatch):
    """On CUDA the fused MixedOp runs the custom op, and equals its per-candidate reference (value, gradients)."""
    calls = []
    original = ma.mixed_activation
    monkeypatch.setattr(ma, "mixed_activation", lambda *args: calls.append(args[1]) or original(*args))
    for in_dim, out_dim in ((16, 8), (8, 8), (8, 16)):
        fused = MixedOp(in_dim, out_dim, "simclr").cuda().double()
        x = torch.randn(6, in_dim, device="cuda", dtype=torch.float64)
        alphas = torch.randn(7, device="cuda", dtype=torch.float64, requires_grad=True)
        outs = []
        for forward in (fused.forward, fused.reference_forward):
            y = forward(x, torch.softmax(alphas, 0))
            outs.append((y, *torch.autograd.grad(y.square().sum(), [alphas, *fused.parameters()])))
            fused.zero_grad()
        for a, b in zip(*outs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert len(calls) == 3  # one per fused forward (the reference runs the candidate modules)


_COMPILE_SCRIPT = r"""
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sswp_fast.kernels import mixed_activation as ma
codes = ma._packed([0, 0, 0, 1, 2, 3, 4])
count = 0
for dtype, acc, cap in (("fp32", tl.float32, 80), ("fp64", tl.float64, 90), ("bf16", tl.float32, 90)):
    constexprs = {"K": 7, "CODES": codes, "ACC": acc, "BLOCK": ma._GPU_BLOCK, "ROUND_BF16": dtype == "bf16"}
    for fn in (ma._forward_kernel, ma._backward_kernel):
        sig = {a: "constexpr" if a in constexprs else "i32" if a == "numel" else
               f"*{'fp64' if acc == tl.float64 else 'fp32'}" if a == "partial_ptr" else f"*{dtype}"
               for a in fn.arg_names}
        compiled = triton.compile(ASTSource(fn, sig, constexprs=constexprs), target=GPUTarget("cuda", cap, 32))
        assert "cubin" in compiled.asm
        count += 1
print(count, "ok")
"""


@pytest.mark.slow
def test_kernels_compile_for_sm80_sm90(tmp_path):
    """Compile-only check (no GPU needed): both kernels for the K=7 mix with all five activations, fp32 to sm_80,
    fp64 and bf16 to sm_90 cubins, without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("6 ok"), proc.stderr[-3000:]
