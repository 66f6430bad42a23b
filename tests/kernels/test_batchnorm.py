"""Triton BatchNorm (``sswp_fast.kernels.batchnorm``) against ``F.batch_norm``.

Without a GPU the kernels run under the Triton interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``
before anything is imported). Checked: the output, the in-place running_mean/running_var updates, dx, dweight
and dbias in training and eval mode, affine on and off, C in {5, 12}, odd and even H×W (7×7, 8×8), N = 2
(fp32: within 1e-4 abs + 1e-4 rel); multi-chunk / multi-block launch plans (shrunk interpreter plan); a bf16 and
an fp16 case (error vs an fp64 reference no worse than 2× PyTorch's own + 1e-6); numerically sound statistics
when |mean| >> std; that the autograd graph saves only x, the per-channel mean/rstd and the weight; the
argument errors of ``F.batch_norm``; the one-line error for CPU tensors without the interpreter; and
``torch.library.opcheck`` of the custom ops.
Grids stay at a few dozen programs, so the file runs in a few seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from sswp_fast.kernels import batchnorm as bn

ATOL = RTOL = 1e-4


def _inputs(shape, affine, dtype=torch.float32, param_dtype=torch.float32, offset=0.0):
    c = shape[1]
    x = (torch.randn(shape, dtype=torch.float64) * 1.5 + offset).to(dtype)
    weight = (torch.rand(c, dtype=torch.float64) + 0.5).to(param_dtype) if affine else None
    bias = torch.randn(c, dtype=torch.float64).to(param_dtype) if affine else None
    running = (torch.randn(c).to(param_dtype), (torch.rand(c) + 0.5).to(param_dtype))
    dout = torch.randn(shape, dtype=torch.float64).to(dtype)
    return x, weight, bias, running, dout


def _run(fn, x, weight, bias, running, dout, training, cast=None):
    """fn(...) forward + backward on fresh leaf copies (optionally cast): (out, rm, rv, dx, dweight, dbias)."""
    cast = cast or (lambda t: t)
    xl = cast(x).detach().clone().requires_grad_(True)
    wl = cast(weight).detach().clone().requires_grad_(True) if weight is not None else None
    bl = cast(bias).detach().clone().requires_grad_(True) if bias is not None else None
    rm, rv = (cast(r).clone() for r in running)
    out = fn(xl, rm, rv, wl, bl, training, 0.1, 1e-5)
    out.backward(cast(dout))
    return out.detach(), rm, rv, xl.grad, wl.grad if wl is not None else None, bl.grad if bl is not None else None


NAMES = ("out", "running_mean", "running_var", "dx", "dweight", "dbias")


@pytest.mark.parametrize("hw", [7, 8])
@pytest.mark.parametrize("c", [5, 12])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_matches_f_batch_norm_fp32(training, affine, c, hw):
    args = _inputs((2, c, hw, hw), affine)
    ours = _run(bn.batch_norm, *args, training)
    ref = _run(F.batch_norm, *args, training)
    for name, a, b in zip(NAMES, ours, ref, strict=True):
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{n}: {m}")  # noqa: B023
    if not training:  # eval mode leaves the running buffers alone
        assert torch.equal(ours[1], args[3][0]) and torch.equal(ours[2], args[3][1])


@pytest.mark.parametrize("plan", [(32, 4), (32, 32), (64, 2)], ids=["1chunk-4blocks", "4chunks-1block", "2x2"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_multi_chunk_plans(monkeypatch, plan, training):
    """Shrink the interpreter plan so a channel spans several chunks (finalize merge) and blocks (lane loops)."""
    monkeypatch.setattr(bn, "_INTERP_MAX_BLOCK", plan[0])
    monkeypatch.setattr(bn, "_INTERP_PROGRAMS", plan[1])
    args = _inputs((2, 3, 7, 9), True, offset=3.0)  # 126 elements per channel: the last block is partial
    ours = _run(bn.batch_norm, *args, training)
    ref = _run(F.batch_norm, *args, training)
    for name, a, b in zip(NAMES, ours, ref, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{n}: {m}")  # noqa: B023


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_banked_statistics_match_the_gather_and_scatter_reference(training, affine):
    """Banked running statistics (``rows``, ``count``): 3 slots of 5 channels reading and updating rows 2, -1 and
    0 of ``[8, 3, 5]`` banks, the counts of those rows one higher, every other row untouched; outputs and
    gradients as ``bn_banked_reference``'s (gather, ``F.batch_norm``, scatter)."""
    x, weight, bias, _, dout = _inputs((2, 15, 6, 6), affine)
    rows = torch.tensor([[2, 5], [-1, 5], [0, 5]])[:, 0]  # strided, as a column of a path's probed ops is
    banks = (torch.randn(8, 3, 5), torch.rand(8, 3, 5) + 0.5, torch.randint(0, 9, (8, 3)))

    def run(fn):
        mean, var, count = (t.clone() for t in banks)
        out = _run(lambda *a: fn(a[0], mean, var, rows, count, *a[3:]), x, weight, bias, (mean, var), dout, training)
        return (*out, mean, var, count)

    ours = run(lambda x, m, v, r, c, *a: bn.batch_norm(x, m, v, *a, rows=r, count=c))
    ref = run(bn.bn_banked_reference)
    for name, a, b in zip((*NAMES, "mean bank", "var bank", "count bank"), ours, ref, strict=True):
        if name in ("running_mean", "running_var") or b is None:
            continue
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{n}: {m}")  # noqa: B023
    untouched = torch.ones(8, 3, dtype=torch.bool)
    if training:
        untouched[rows, torch.arange(3)] = False
        assert torch.equal(ours[-1][~untouched], banks[2][~untouched] + 1)
    for mine, before in zip(ours[-3:], banks, strict=True):
        assert torch.equal(mine[untouched], before[untouched])


def test_banked_statistics_need_fitting_banks():
    x = torch.randn(2, 6, 4, 4)
    with pytest.raises(ValueError, match=r"need \[rows, 3, 2\] running banks"):
        bn.batch_norm(x, torch.zeros(8, 2, 3), torch.ones(8, 2, 3), training=True,
                      rows=torch.zeros(3, dtype=torch.long), count=torch.zeros(8, 3, dtype=torch.long))


@pytest.mark.parametrize(
    ("dtype", "param_dtype"),
    [(torch.bfloat16, torch.float32), (torch.float16, torch.float32), (torch.bfloat16, torch.bfloat16)],
    ids=["bf16", "fp16", "bf16-params"],
)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_low_precision_no_worse_than_torch(dtype, param_dtype, training):
    """bf16/fp16 input (parameters and buffers fp32, or bf16 as after ``module.bfloat16()``): max error vs an fp64
    reference at most 2x PyTorch's own + 1e-6. For the big tensors (out, dx) also the mean error within 1.25x:
    a truncating bf16 cast (the interpreter's own, see ``common.cast_out``) doubles the mean but not the max error."""
    args = _inputs((2, 12, 8, 8), True, dtype=dtype, param_dtype=param_dtype)
    ours = _run(bn.batch_norm, *args, training)
    ref = _run(F.batch_norm, *args, training)
    exact = _run(F.batch_norm, *args, training, cast=lambda t: t.double())
    for name, a, b, e in zip(NAMES, ours, ref, exact, strict=True):
        assert a.dtype == b.dtype, name
        ours_err, torch_err = (a.double() - e).abs(), (b.double() - e).abs()
        worst, worst_torch = ours_err.max().item(), torch_err.max().item()
        assert worst <= 2 * worst_torch + 1e-6, f"{name}: max error {worst:.3g} vs torch {worst_torch:.3g}"
        if a.numel() > 100:
            avg, avg_torch = ours_err.mean().item(), torch_err.mean().item()
            assert avg <= 1.25 * avg_torch + 1e-6, f"{name}: mean error {avg:.3g} vs torch {avg_torch:.3g}"


def test_statistics_sound_when_mean_dwarfs_std():
    """Shifted lane Welford + Chan merge: rstd (and the unbiased variance written to the running buffer, with
    momentum 1) of data with mean 1e4 and std 0.5 as good as PyTorch's."""
    x = torch.randn(2, 5, 7, 7) * 0.5 + 1e4
    running_var = torch.ones(5)
    _, mean, rstd = bn.bn_train_forward(x, running_mean=torch.zeros(5), running_var=running_var, momentum=1.0)
    xd = x.double()
    var64, mean64 = torch.var_mean(xd, dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean.double(), mean64, atol=2e-3, rtol=0)  # fp32 ulp at 1e4 is ~1e-3
    torch.testing.assert_close(rstd.double(), (var64 + 1e-5).rsqrt(), atol=0, rtol=1e-6)
    torch.testing.assert_close(running_var.double(), var64 * 98 / 97, atol=0, rtol=1e-5)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_saves_only_x_mean_rstd(affine):
    """Everything the graph saves (seen through saved_tensors_hooks and grad_fn.saved_tensors): x itself, the
    per-channel mean and rstd, and the weight parameter when affine; no normalised copy of x."""
    x, weight, bias, _, _ = _inputs((2, 5, 8, 8), affine)
    x.requires_grad_(True)
    if affine:
        weight.requires_grad_(True)
        bias.requires_grad_(True)
    packed = []

    def pack(t):
        packed.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = bn.batch_norm(x, None, None, weight, bias, training=True)
    assert type(out.grad_fn).__name__ == "BatchNormFnBackward"
    saved = out.grad_fn.saved_tensors
    assert len(saved) == 4  # x, mean, rstd, weight (None when not affine)
    assert saved[0].data_ptr() == x.data_ptr() and saved[0].shape == x.shape
    assert saved[1].shape == saved[2].shape == (5,) and saved[1].dtype == saved[2].dtype == torch.float32
    assert (saved[3].data_ptr() == weight.data_ptr()) if affine else (saved[3] is None)
    assert len(packed) == (4 if affine else 3)
    big = [t for t in packed if t.numel() > 5]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()


def test_functional_api_pieces():
    """bn_train_forward / bn_forward / bn_backward compose to F.batch_norm's training step."""
    x, weight, bias, (rm, rv), dout = _inputs((2, 12, 7, 7), True)
    rm_ref, rv_ref = rm.clone(), rv.clone()
    version = rm._version
    y, mean, rstd = bn.bn_train_forward(x, weight, bias, 1e-5, rm, rv, 0.1)
    out = bn.bn_forward(x, mean, rstd, weight, bias)
    xr = x.clone().requires_grad_(True)
    ref = F.batch_norm(xr, rm_ref, rv_ref, weight, bias, True, 0.1, 1e-5)
    torch.testing.assert_close(y, ref, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(rm, rm_ref, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(rv, rv_ref, atol=ATOL, rtol=RTOL)
    assert rm._version > version  # autograd is told that the kernel wrote the buffer
    dx, dw, db = bn.bn_backward(dout, x, mean, rstd, weight, training=True)
    torch.testing.assert_close(dx, torch.autograd.grad(ref, xr, dout)[0], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(db, dout.sum((0, 2, 3)), atol=ATOL, rtol=RTOL)
    xhat = (x - mean[:, None, None]) * rstd[:, None, None]
    torch.testing.assert_close(dw, (dout * xhat).sum((0, 2, 3)), atol=ATOL, rtol=RTOL)
    assert bn.bn_backward(dout, x, mean, rstd, None, training=False, need_dx=False) == (None, None, None)
    torch.testing.assert_close(bn.bn_reference(x, None, None, weight, bias, True), ref.detach())


def test_custom_ops_pass_opcheck():
    """The three ops' schemas (the training forward's in-place running buffers and count bank included), fake
    kernels and autograd registration (``torch.library.opcheck``): plain and banked training forwards, the apply,
    and the backward with and without each gradient."""
    x, weight, bias, (rm, rv), dout = _inputs((2, 6, 3, 3), True)
    ops = torch.ops.sswp_fast
    torch.library.opcheck(ops.batch_norm_train.default, (x, weight, bias, 1e-5, rm, rv, 0.1, None, None))
    torch.library.opcheck(ops.batch_norm_train.default, (x, None, None, 1e-5, None, None, 0.1, None, None))
    banks = (torch.randn(4, 3, 2), torch.rand(4, 3, 2) + 0.5, torch.zeros(4, 3, dtype=torch.long))
    rows = torch.tensor([1, -1, 0])
    torch.library.opcheck(ops.batch_norm_train.default, (x, weight, bias, 1e-5, banks[0], banks[1], 0.1, rows,
                                                         banks[2]))
    _, mean, rstd = bn.bn_train_forward(x)
    torch.library.opcheck(ops.batch_norm_apply.default, (x, mean, rstd, weight, bias))
    for training, need_dx, need_param_grads in ((True, True, True), (False, False, True), (False, True, False)):
        torch.library.opcheck(ops.batch_norm_backward.default,
                              (dout, x, mean, rstd, weight, training, need_dx, need_param_grads))


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_given_batch_statistics_reproduce_the_training_forward_and_backward(affine, monkeypatch):
    """A recomputation's BatchNorm: the batch statistics that bn_train_forward returned for the same input give the
    same output (the apply launch alone: no statistics launch) and the same, training-mode, gradients as computing
    them again."""
    x, weight, bias, _, dout = _inputs((2, 12, 7, 7), affine)
    _, mean, rstd = bn.bn_train_forward(x, weight, bias)
    statistics_launches = []
    chunk_stats = bn._ChunkStats
    monkeypatch.setattr(bn, "_ChunkStats", lambda *args: statistics_launches.append(1) or chunk_stats(*args))
    computed = _run(lambda t, rm, rv, w, b, *_: bn.batch_norm(t, None, None, w, b, True), x, weight, bias,
                    (x, x), dout, True)
    assert len(statistics_launches) == 1
    given = _run(lambda t, rm, rv, w, b, *_: bn.batch_norm(t, None, None, w, b, True, batch_stats=(mean, rstd)),
                 x, weight, bias, (x, x), dout, True)
    assert len(statistics_launches) == 1, "given statistics are not computed again"
    for name, a, b in zip(NAMES, computed, given, strict=True):
        assert (a is None and b is None) or torch.equal(a, b), name
    with pytest.raises(ValueError, match="batch_stats"):
        bn.batch_norm(x, torch.zeros(12), torch.ones(12), training=True, batch_stats=(mean, rstd))


def test_errors_like_f_batch_norm(monkeypatch):
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn.batch_norm(torch.randn(1, 3, 1, 1), None, None, training=True)
    with pytest.raises(RuntimeError, match="running_mean"):
        bn.batch_norm(torch.randn(2, 3, 4, 4), None, None, training=False)
    with pytest.raises(TypeError, match="float64"):
        bn.batch_norm(torch.randn(2, 3, 4, 4, dtype=torch.float64), None, None, training=True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        bn.batch_norm(torch.randn(2, 3, 4, 4), None, None, training=True)


_COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sswp_fast.kernels import batchnorm as bn
io = {"x_ptr": "*bf16", "y_ptr": "*bf16", "dy_ptr": "*bf16", "dx_ptr": "*bf16", "rm_ptr": "*bf16", "rv_ptr": "*bf16",
      "rows_ptr": "*i64", "count_ptr": "*i64"}
cases = [
    (bn._bn_stats_partial_kernel, {"BLOCK": 1024}),
    (bn._bn_apply_kernel, {"HAS_WEIGHT": True, "HAS_BIAS": True, "RTNE_BF16": False, "BLOCK": 1024}),
    (bn._bn_finalize_apply_kernel, {"HAS_RUNNING": True, "BANKED": False, "RTNE_BF16_RUNNING": False,
                                    "HAS_WEIGHT": True, "HAS_BIAS": True, "RTNE_BF16": False, "BLOCK": 1024,
                                    "BLOCK_S": 256}),
    (bn._bn_finalize_apply_kernel, {"HAS_RUNNING": True, "BANKED": True, "RTNE_BF16_RUNNING": False,
                                    "HAS_WEIGHT": True, "HAS_BIAS": True, "RTNE_BF16": False, "BLOCK": 1024,
                                    "BLOCK_S": 256}),  # the device executor's banked statistics
    (bn._bn_bwd_reduce_kernel, {"BLOCK": 1024}),
    (bn._bn_bwd_dx_kernel, {"HAS_WEIGHT": True, "TRAINING": True, "RTNE_BF16": False, "BLOCK": 1024,
                            "BLOCK_S": 256}),
    (bn._bn_bwd_dx_kernel, {"HAS_WEIGHT": False, "TRAINING": False, "RTNE_BF16": False, "BLOCK": 128, "BLOCK_S": 1,
                            "HW": 1, "ITERS": 1}),  # ints equal to 1 are specialised to constexprs at launch
]
for fn, cex in cases:
    sig = {a: "constexpr" if a in cex else io.get(a, "*fp32") if a.endswith("_ptr")
           else "fp32" if a in ("eps", "momentum", "inv_m", "inv_m1") else "i32" for a in fn.arg_names}
    for cap in (80, 90):
        assert "cubin" in triton.compile(ASTSource(fn, sig, constexprs=cex), target=GPUTarget("cuda", cap, 32)).asm
print("ok")
"""


@pytest.mark.slow
def test_kernels_compile_for_sm80_sm90(tmp_path):
    """Compile-only check for real GPUs (no GPU needed): each kernel through Triton's CUDA backend to a cubin
    for sm_80 and sm_90, in a subprocess imported without TRITON_INTERPRET (about 10 s)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
