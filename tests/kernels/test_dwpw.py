"""The fused ReLU → depthwise → pointwise Triton kernels (``sswp_fast.kernels.dwpw``) against the PyTorch reference.

Forward and all three gradients for every (kernel, dilation, padding) of the sep/dil ops × stride {1, 2}, odd
and even (and non-square) spatial sizes and channel counts that are not powers of two; fp16/bf16 precision
against an fp64 truth; multi-block tiling; the saved-tensor contract. Without a GPU the kernels run in the
Triton interpreter (tests/conftest.py sets ``TRITON_INTERPRET=1``), so the shapes are kept small.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import triton.language as tl

from sswp_fast.kernels import dwpw
from sswp_fast.kernels.common import cast_out, jit, launcher
from sswp_fast.kernels.dwpw import dwpw_backward, dwpw_forward, dwpw_reference, relu_dw_pw

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (kernel, padding, dilation) of sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, dil_conv_5x5
CONVS = [pytest.param(3, 1, 1, id="sep3"), pytest.param(5, 2, 1, id="sep5"),
         pytest.param(3, 2, 2, id="dil3"), pytest.param(5, 4, 2, id="dil5")]
# (C, C_out, H, W): odd/even/non-square images, channels not powers of two
SHAPES = [pytest.param(5, 6, 7, 7, id="c5-6_7x7"), pytest.param(12, 12, 8, 8, id="c12_8x8"),
          pytest.param(5, 6, 8, 7, id="c5-6_8x7"), pytest.param(12, 12, 7, 8, id="c12_7x8")]


def make_inputs(c: int, c_out: int, h: int, w: int, k: int, dtype: torch.dtype = torch.float32, n: int = 2):
    x = torch.randn(n, c, h, w, device=DEVICE).to(dtype)
    w_dw = (torch.randn(c, 1, k, k, device=DEVICE) / k).to(dtype)
    w_pw = (torch.randn(c_out, c, 1, 1, device=DEVICE) / c**0.5).to(dtype)
    return x, w_dw, w_pw


def run_op(fn, x, w_dw, w_pw, dy, conv, dtype=None):
    """Output and (dx, d w_dw, d w_pw) of ``fn`` by autograd, from copies of the inputs cast to ``dtype``."""
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in (x, w_dw, w_pw)]
    y = fn(*leaves, *conv)
    grads = torch.autograd.grad(y, leaves, dy.to(y.dtype))
    return (y, *grads)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k,padding,dilation", CONVS)
@pytest.mark.parametrize("c,c_out,h,w", SHAPES)
def test_fp32_forward_and_gradients_match_reference(c, c_out, h, w, k, padding, dilation, stride):
    conv = (stride, padding, dilation)
    x, w_dw, w_pw = make_inputs(c, c_out, h, w, k)
    dy = torch.randn_like(dwpw_reference(x, w_dw, w_pw, *conv))
    ours = run_op(relu_dw_pw, x, w_dw, w_pw, dy, conv)
    # fp64 reference from the same values: exact on any device (cuDNN's fp32 convs may use TF32)
    ref = run_op(dwpw_reference, x, w_dw, w_pw, dy.double(), conv, torch.float64)
    for name, a, b in zip(("y", "dx", "dw_dw", "dw_pw"), ours, ref, strict=True):
        assert a.dtype == torch.float32 and a.shape == b.shape, name
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("k,padding,dilation,stride", [(3, 1, 1, 1), (5, 4, 2, 2)], ids=["sep3_s1", "dil5_s2"])
def test_half_precision_error_at_most_twice_pytorch(dtype, k, padding, dilation, stride):
    conv = (stride, padding, dilation)
    x, w_dw, w_pw = make_inputs(12, 20, 8, 7, k, dtype)
    dy = torch.randn_like(dwpw_reference(x, w_dw, w_pw, *conv))
    truth = run_op(dwpw_reference, x, w_dw, w_pw, dy.double(), conv, torch.float64)
    ours = run_op(relu_dw_pw, x, w_dw, w_pw, dy, conv)
    torch_same_dtype = run_op(dwpw_reference, x, w_dw, w_pw, dy, conv)
    for name, a, b, t in zip(("y", "dx", "dw_dw", "dw_pw"), ours, torch_same_dtype, truth, strict=True):
        assert a.dtype == dtype and a.shape == t.shape, name
        err, torch_err = (a.double() - t).abs().max().item(), (b.double() - t).abs().max().item()
        assert err <= 2 * torch_err + 1e-6, f"{name}: our error {err:.3g} vs PyTorch's {torch_err:.3g}"


@jit
def _store_rounded(x_ptr, y_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(y_ptr + offs, cast_out(tl.load(x_ptr + offs), y_ptr, True))


def test_bf16_output_rounding_is_round_to_nearest_even():
    """The by-hand rounding in ``cast_out`` (the interpreter's own fp32→bf16 cast truncates) equals torch's.

    Normal numbers only: the interpreter also mangles subnormal bf16 values, which this op never produces."""
    base = torch.randint(0x0080, 0x7F00, (1020,), dtype=torch.int32) << 16  # normal magnitudes; 4*1020+16 = 4096
    ties = base | 0x8000  # exactly half-way between two bf16 values: both even and odd neighbours
    noise = base | torch.randint(0, 1 << 16, (1020,), dtype=torch.int32)
    bits = torch.cat([ties, noise, -ties, -noise])
    x = torch.cat([bits.view(torch.float32), torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"),
                                                          3.3895e38, -3.3895e38, 1.0, -1.0] + [0.5] * 7)]).to(DEVICE)
    y = torch.empty_like(x, dtype=torch.bfloat16)
    launcher(_store_rounded, x)[(1,)](x, y, N=x.numel())
    expected = x.to(torch.bfloat16)
    assert torch.equal(y.isnan(), expected.isnan())
    keep = ~expected.isnan()
    assert torch.equal(y[keep].view(torch.int16), expected[keep].view(torch.int16))


def test_multiple_blocks_and_channel_loop(monkeypatch):
    """Small forced tiles: several pixel tiles across rows and columns, a 2-step channel loop, partial blocks."""
    blocks = dwpw._Blocks(p=16, pw=4, c=16, co=32, q=16, qw=8, num_warps=4)
    monkeypatch.setattr(dwpw, "block_sizes", lambda *a, **kw: blocks)
    conv = (2, 2, 2)  # dil_conv_3x3, stride 2: 5x5 outputs in 2x2 tiles of 4x4
    x, w_dw, w_pw = make_inputs(20, 18, 9, 10, 3)
    dy = torch.randn_like(dwpw_reference(x, w_dw, w_pw, *conv))
    ours = run_op(relu_dw_pw, x, w_dw, w_pw, dy, conv)
    ref = run_op(dwpw_reference, x, w_dw, w_pw, dy.double(), conv, torch.float64)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("interpreted", [True, False], ids=["interpreter", "gpu"])
def test_block_sizes_are_valid_dot_tiles(interpreted):
    """Every tile is a power of two ≥ 16 (``tl.dot``), pixel tiles are whole power-of-two rows, and the GPU
    accumulator stays within 8192 fp32 elements (the no-GPU CI still checks the GPU choice)."""
    for ho, wo, c, c_out in [(7, 8, 5, 6), (32, 32, 36, 36), (16, 16, 144, 144), (1, 1, 1, 1), (64, 3, 72, 72)]:
        for stride in (1, 2):
            b = dwpw.block_sizes(ho, wo, ho * stride, wo * stride, c, c_out, stride, interpreted)
            for size in (b.p, b.c, b.co, b.q):
                assert size >= 16 and size & (size - 1) == 0
            assert b.co >= c_out and b.p % b.pw == 0 and b.q % b.qw == 0
            if not interpreted:
                assert b.p * b.co <= 8192 or b.p == 16


def test_launchers_accept_non_contiguous_input_and_return_contiguous():
    conv = (1, 1, 1)
    x, w_dw, w_pw = make_inputs(6, 5, 7, 8, 3)
    x_cl = x.to(memory_format=torch.channels_last)
    y = dwpw_forward(x_cl, w_dw, w_pw, *conv)
    assert y.is_contiguous()
    torch.testing.assert_close(y, dwpw_reference(x, w_dw, w_pw, *conv), atol=1e-4, rtol=1e-4)
    dy = torch.randn_like(y).transpose(2, 3).contiguous().transpose(2, 3)  # same values, non-contiguous
    dx, g_wdw, g_wpw = dwpw_backward(dy, x_cl, w_dw, w_pw, *conv)
    assert dx.is_contiguous() and g_wdw.shape == w_dw.shape and g_wpw.shape == w_pw.shape
    ref = run_op(dwpw_reference, x, w_dw, w_pw, dy, conv)
    for a, b in zip((dx, g_wdw, g_wpw), ref[1:], strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_autograd_saves_only_input_and_weights():
    """Recompute-in-backward: the graph keeps x and the two weights, no intermediate activation."""
    x, w_dw, w_pw = (t.requires_grad_() for t in make_inputs(5, 6, 7, 7, 3))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = relu_dw_pw(x, w_dw, w_pw, 1, 1, 1)
    assert [t.data_ptr() for t in saved] == [x.data_ptr(), w_dw.data_ptr(), w_pw.data_ptr()]
    y.sum().backward()
    assert x.grad is not None and w_dw.grad is not None and w_pw.grad is not None


def test_custom_ops_pass_opcheck():
    """The op and its backward op: schemas, fake kernels (output sizes at stride 2 and dilation 2) and autograd
    registration (``torch.library.opcheck``), on a small input."""
    x, w_dw, w_pw = make_inputs(5, 6, 7, 7, 3, n=1)
    conv = (2, 2, 2)
    torch.library.opcheck(torch.ops.sswp_fast.relu_dw_pw.default,
                          (x.requires_grad_(), w_dw.requires_grad_(), w_pw.requires_grad_(), *conv))
    dy = torch.randn_like(dwpw_reference(x, w_dw, w_pw, *conv)).detach()
    torch.library.opcheck(torch.ops.sswp_fast.relu_dw_pw_backward.default,
                          (dy, x.detach(), w_dw.detach(), w_pw.detach(), *conv))


def test_cpu_tensors_without_interpreter_raise(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, w_dw, w_pw = make_inputs(5, 6, 7, 7, 3)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        dwpw_forward(x.cpu(), w_dw.cpu(), w_pw.cpu(), 1, 1, 1)


def test_bad_shapes_raise():
    x, w_dw, w_pw = make_inputs(5, 6, 7, 7, 3)
    with pytest.raises(ValueError, match="w_pw"):
        dwpw_forward(x, w_dw, w_pw[:, :4], 1, 1, 1)
    with pytest.raises(ValueError, match="w_dw"):
        dwpw_forward(x, w_dw[:4], w_pw, 1, 1, 1)


_COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sswp_fast.kernels import dwpw
shapes = [(36, 32, 3, 1, 1, 1), (144, 8, 5, 2, 4, 2)]  # the first CIFAR cell's sep_conv_3x3; dil_conv_5x5, C=144
count = 0
for c, size, k, stride, pad, dil in shapes:
    out = (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
    b = dwpw.block_sizes(out, out, size, size, c, c, stride, False)
    conv = {"STRIDE": stride, "PAD": pad, "DIL": dil, "K": k, "BLOCK_C": b.c}
    for dtype, precision in (("fp32", "ieee"), ("bf16", "tf32")):
        cases = [
            (dwpw._dwpw_fwd_kernel, {**conv, "BLOCK_P": b.p, "BLOCK_W": b.pw, "BLOCK_CO": b.co,
                                     "DOT_PRECISION": precision, "ROUND_BF16": dtype == "bf16"}),
            (dwpw._dwpw_bwd_act_kernel, {**conv, "BLOCK_P": b.p, "BLOCK_W": b.pw, "BLOCK_CO": b.co,
                                         "DOT_PRECISION": precision}),
            (dwpw._dwpw_bwd_dx_kernel, {**conv, "BLOCK_Q": b.q, "BLOCK_W": b.qw, "ROUND_BF16": dtype == "bf16"}),
        ]
        for fn, cex in cases:
            sig = {a: "constexpr" if a in cex else ("*fp32" if a in ("g_ptr", "gwdw_ptr", "gwpw_ptr") else
                   f"*{dtype}") if a.endswith("_ptr") else "i32" for a in fn.arg_names}
            compiled = triton.compile(ASTSource(fn, sig, constexprs=cex), target=GPUTarget("cuda", 90, 32))
            assert "cubin" in compiled.asm
            count += 1
print(count, "ok")
"""


@pytest.mark.slow(seconds=60)
def test_kernels_compile_for_sm90(tmp_path):
    """Compile-only check for real GPUs (no GPU needed): the three kernels at the smallest and the widest CIFAR
    search shapes (most registers), fp32 and bf16, through Triton's CUDA backend to cubins for sm_90 (H100/H200,
    the lent GPUs; sm_80 doubled the test's minutes), in a subprocess that imports the module without
    TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0 and proc.stdout.strip() == "12 ok", (proc.stdout[-500:], proc.stderr[-3000:])
