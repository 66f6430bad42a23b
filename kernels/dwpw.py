"""Fused ReLU → depthwise k×k → pointwise 1×1 convolution: one "half" of the DARTS ``sep_conv`` / ``dil_conv``.

``y = conv1x1(conv_dw(relu(x)))`` with no bias, where the depthwise conv has ``groups=C``, kernel ``k``,
stride ``s``, padding ``p`` and dilation ``d`` (the search space uses sep k3 p1 d1, sep k5 p2 d1, dil k3 p2 d2
and dil k5 p4 d2, with s ∈ {1, 2}; any k, s, p, d work). Shapes: ``x`` [N, C, H, W], ``w_dw`` [C, 1, k, k],
``w_pw`` [C_out, C, 1, 1], ``y`` [N, C_out, Ho, Wo] with ``Ho = (H + 2p - d(k-1) - 1) // s + 1``.

Contents (one concept, Liger-Kernel style). Each kernel is a thin wrapper that places one image and calls its
``@triton.jit`` tile function (``fwd_tile``, ``bwd_act_tile``, ``bwd_dx_tile``), which the slotted kernels of
:mod:`.sampled_dwpw` call too, with a variant's constants chosen per program:

* ``_dwpw_fwd_kernel``: one kernel for the whole forward. A program owns ``BLOCK_P`` output pixels of one
  image (a rectangle of ``BLOCK_W``-wide rows) and all ``C_out`` channels; it loops over input-channel blocks,
  builds the ReLU'd depthwise tile [BLOCK_P, BLOCK_C] from the k×k taps (masked gathers give the zero padding)
  and accumulates ``tl.dot(tile, w_pw^T tile)`` in fp32. The depthwise activation never reaches memory.
* ``_dwpw_bwd_act_kernel``: backward part 1, same grid as the forward. From ``dy`` it forms the gradient of the
  depthwise output ``g = dy @ W_pw`` (stored to a temporary fp32 gradient buffer [N, C, Ho, Wo]), recomputes
  the depthwise activation from ``x`` and adds this program's share of both weight gradients into fp32 buffers
  with ``tl.atomic_add``: ``dW_pw += dy^T @ act`` and ``dW_dw[c, tap] += sum_p g * relu(x at the tap)``.
* ``_dwpw_bwd_dx_kernel``: backward part 2, ``dx = relu'(x) * conv_transpose_dw(g)``. Input pixel ``i``
  receives from output pixel ``o`` through tap ``t`` when ``i = o*s - p + t*d``, i.e. ``o = (i + p - t*d) / s``
  when that is a non-negative integer below ``Ho`` (checked per tap, so stride 2 and dilation 2 are exact).
* ``dwpw_forward`` / ``dwpw_backward``: launchers; the custom ops ``sswp_fast::relu_dw_pw`` (with fake and
  autograd kernels; autograd saves only ``x`` and the two weights: recompute-in-backward, no intermediate
  activation is stored) and ``sswp_fast::relu_dw_pw_backward``; ``relu_dw_pw``: the entry point;
  ``dwpw_reference``: the pure-PyTorch reference.

All arithmetic is fp32: fp16/bf16 inputs are upcast on load (fp64 ones are computed in fp32 too); the output
has the input dtype and the weight gradients their weights' dtype. ``tl.dot`` runs on fp32 operands: exact
``"ieee"`` products for fp32 inputs, TF32 tensor cores for fp16/bf16 inputs (whose own precision is no better).
fp32 operands also sidestep the interpreter's wrong bf16 ``tl.dot``. On CPU tensors the kernels run only under
the Triton interpreter (``TRITON_INTERPRET=1`` at the launch, see :mod:`.common`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .common import cast_out, check_device, interpreted, jit, launcher

__all__ = ["block_sizes", "bwd_act_tile", "bwd_dx_tile", "copy_tile", "dot_precision", "dwpw_backward", "dwpw_forward",
           "dwpw_reference", "fwd_tile", "grid_tiles", "pixel_tile", "relu_dw_pw", "zero_tile"]


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------


@jit
def pixel_tile(pid, HEIGHT, WIDTH, BLOCK: tl.constexpr, BLOCK_W: tl.constexpr):
    """Program ``pid``'s BLOCK pixels: a (BLOCK // BLOCK_W) × BLOCK_W rectangle of an HEIGHT × WIDTH image.

    Returns (row, col, flat offset, in-image mask). Rows of BLOCK_W consecutive columns (BLOCK_W a power of two)
    let the compiler see contiguous addresses along the pixel axis, so GPU loads are coalesced."""
    tiles_w = tl.cdiv(WIDTH, BLOCK_W)
    r = tl.arange(0, BLOCK)
    row = (pid // tiles_w) * (BLOCK // BLOCK_W) + r // BLOCK_W
    col = (pid % tiles_w) * BLOCK_W + r % BLOCK_W
    return row, col, row * WIDTH + col, (row < HEIGHT) & (col < WIDTH)


@jit
def _output_tile(pid, HO, WO, STRIDE: tl.constexpr, PAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr):
    """Program ``pid``'s output pixels (flat offset, mask) and the input row / column of their first tap."""
    oh, ow, offs_p, mask_p = pixel_tile(pid, HO, WO, BLOCK_P, BLOCK_W)
    return offs_p, mask_p, oh * STRIDE - PAD, ow * STRIDE - PAD


@jit
def _tap(x_img, offs_c, mask_c, ih0, iw0, mask_p, H, W, kh: tl.constexpr, kw: tl.constexpr, DIL: tl.constexpr):
    """relu(x[n, c, ih0 + kh*DIL, iw0 + kw*DIL]) as a [BLOCK_P, BLOCK_C] fp32 tile, zero outside the image."""
    ih = ih0 + kh * DIL
    iw = iw0 + kw * DIL
    inside = mask_p & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    ptrs = x_img + offs_c[None, :] * (H * W) + (ih * W + iw)[:, None]
    xv = tl.load(ptrs, mask=inside[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
    return tl.maximum(xv, 0.0)


@jit
def zero_tile(out_img, pid, pid_c, C, HO, WO, BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr,
              BLOCK_C: tl.constexpr):
    """Zeros into the tile that :func:`fwd_tile` (``pid_c`` 0, ``BLOCK_C`` its ``BLOCK_CO``) or
    :func:`bwd_dx_tile` (``HO, WO`` the input's size) would write of one image's [C, HO, WO] output: what a slot
    that runs nothing writes, so that the output needs no fill launch first."""
    _, _, offs_p, mask_p = pixel_tile(pid, HO, WO, BLOCK_P, BLOCK_W)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    zeros = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32).to(out_img.dtype.element_ty)
    tl.store(out_img + offs_c[None, :] * (HO * WO) + offs_p[:, None], zeros,
             mask=mask_p[:, None] & (offs_c < C)[None, :])


@jit
def copy_tile(src_img, out_img, pid, pid_c, C, HO, WO, BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr,
              BLOCK_C: tl.constexpr, ROUND_BF16: tl.constexpr):
    """:func:`zero_tile`'s tile of ``src_img`` (same layout) into ``out_img``, in its dtype: what a slot that runs
    nothing writes when its output is given elsewhere."""
    _, _, offs_p, mask_p = pixel_tile(pid, HO, WO, BLOCK_P, BLOCK_W)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs = offs_c[None, :] * (HO * WO) + offs_p[:, None]
    mask = mask_p[:, None] & (offs_c < C)[None, :]
    value = tl.load(src_img + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_img + offs, cast_out(value, out_img, ROUND_BF16), mask=mask)


@jit
def fwd_tile(
    x_img, wdw_ptr, wpw_ptr, y_img, pid_p,
    C, C_OUT, H, W, HO, WO,
    STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr, K: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_CO: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ROUND_BF16: tl.constexpr,
):
    """Output tile ``pid_p`` of one image: y_img[:, pixels] = W_pw @ dw(relu(x_img))[:, pixels].

    ``x_img`` / ``y_img`` point at one image's [C, H, W] input and [C_OUT, HO, WO] output (channel strides H*W
    and HO*WO); ``wdw_ptr`` at the [C, K*K] and ``wpw_ptr`` at the [C_OUT, C] weights."""
    P = HO * WO
    offs_p, mask_p, ih0, iw0 = _output_tile(pid_p, HO, WO, STRIDE, PAD, BLOCK_P, BLOCK_W)
    offs_co = tl.arange(0, BLOCK_CO)
    mask_co = offs_co < C_OUT

    acc = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        act = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for kh in tl.static_range(K):
            for kw in tl.static_range(K):
                xr = _tap(x_img, offs_c, mask_c, ih0, iw0, mask_p, H, W, kh, kw, DIL)
                wt = tl.load(wdw_ptr + offs_c * (K * K) + (kh * K + kw), mask=mask_c, other=0.0).to(tl.float32)
                act += xr * wt[None, :]
        # w_pw is [C_out, C]; load the [BLOCK_C, BLOCK_CO] tile of its transpose
        wpw = tl.load(wpw_ptr + offs_co[None, :] * C + offs_c[:, None],
                      mask=mask_c[:, None] & mask_co[None, :], other=0.0).to(tl.float32)
        acc = tl.dot(act, wpw, acc, input_precision=DOT_PRECISION)

    y_ptrs = y_img + offs_co[None, :] * P + offs_p[:, None]
    tl.store(y_ptrs, cast_out(acc, y_img, ROUND_BF16), mask=mask_p[:, None] & mask_co[None, :])


@jit
def _dwpw_fwd_kernel(
    x_ptr, wdw_ptr, wpw_ptr, y_ptr,
    C, C_OUT, H, W, HO, WO,
    STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr, K: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_CO: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    ROUND_BF16: tl.constexpr,
):
    """Grid (pixel tiles of Ho×Wo, N): y[n, :, pixels] = W_pw @ dw(relu(x[n]))[:, pixels]."""
    n = tl.program_id(1).to(tl.int64)
    fwd_tile(x_ptr + n * C * H * W, wdw_ptr, wpw_ptr, y_ptr + n * C_OUT * HO * WO, tl.program_id(0),
             C, C_OUT, H, W, HO, WO, STRIDE, PAD, DIL, K, BLOCK_P, BLOCK_W, BLOCK_C, BLOCK_CO,
             DOT_PRECISION, ROUND_BF16)


@jit
def bwd_act_tile(
    x_img, wdw_ptr, wpw_ptr, dy_img, g_img, gwdw_ptr, gwpw_ptr, pid_p,
    C, C_OUT, H, W, HO, WO,
    STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr, K: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_CO: tl.constexpr,
    DOT_PRECISION: tl.constexpr, WEIGHT_GRADS: tl.constexpr,
):
    """Output tile ``pid_p`` of one image: g = dy @ W_pw to ``g_img`` ([C, HO, WO], fp32); with ``WEIGHT_GRADS``,
    atomically add the tile's share of dW_pw to ``gwpw_ptr`` ([C_OUT, C]) and of dW_dw to ``gwdw_ptr``
    ([C, K*K]), fp32 buffers (without, the depthwise activation is not rebuilt: one matrix product a tile)."""
    P = HO * WO
    offs_p, mask_p, ih0, iw0 = _output_tile(pid_p, HO, WO, STRIDE, PAD, BLOCK_P, BLOCK_W)
    offs_co = tl.arange(0, BLOCK_CO)
    mask_co = offs_co < C_OUT

    dy = tl.load(dy_img + offs_co[None, :] * P + offs_p[:, None],
                 mask=mask_p[:, None] & mask_co[None, :], other=0.0).to(tl.float32)  # [BLOCK_P, BLOCK_CO]
    dy_t = tl.trans(dy)  # [BLOCK_CO, BLOCK_P]
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask_pw = mask_co[:, None] & mask_c[None, :]
        wpw = tl.load(wpw_ptr + offs_co[:, None] * C + offs_c[None, :], mask=mask_pw, other=0.0).to(tl.float32)
        g = tl.dot(dy, wpw, input_precision=DOT_PRECISION)  # [BLOCK_P, BLOCK_C]; zero on masked pixels
        tl.store(g_img + offs_c[None, :] * P + offs_p[:, None], g, mask=mask_p[:, None] & mask_c[None, :])

        if WEIGHT_GRADS:
            act = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
            for kh in tl.static_range(K):
                for kw in tl.static_range(K):
                    xr = _tap(x_img, offs_c, mask_c, ih0, iw0, mask_p, H, W, kh, kw, DIL)
                    w_off = offs_c * (K * K) + (kh * K + kw)
                    wt = tl.load(wdw_ptr + w_off, mask=mask_c, other=0.0).to(tl.float32)
                    act += xr * wt[None, :]
                    tl.atomic_add(gwdw_ptr + w_off, tl.sum(g * xr, axis=0), mask=mask_c)
            gwpw = tl.dot(dy_t, act, input_precision=DOT_PRECISION)  # [BLOCK_CO, BLOCK_C]
            tl.atomic_add(gwpw_ptr + offs_co[:, None] * C + offs_c[None, :], gwpw, mask=mask_pw)


@jit
def _dwpw_bwd_act_kernel(
    x_ptr, wdw_ptr, wpw_ptr, dy_ptr, g_ptr, gwdw_ptr, gwpw_ptr,
    C, C_OUT, H, W, HO, WO,
    STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr, K: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_CO: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Grid (pixel tiles of Ho×Wo, N): g = dy @ W_pw to g_ptr; atomically add dW_pw and dW_dw (fp32 buffers)."""
    n = tl.program_id(1).to(tl.int64)
    P = HO * WO
    bwd_act_tile(x_ptr + n * C * H * W, wdw_ptr, wpw_ptr, dy_ptr + n * C_OUT * P, g_ptr + n * C * P,
                 gwdw_ptr, gwpw_ptr, tl.program_id(0), C, C_OUT, H, W, HO, WO, STRIDE, PAD, DIL, K,
                 BLOCK_P, BLOCK_W, BLOCK_C, BLOCK_CO, DOT_PRECISION, True)


@jit
def bwd_dx_tile(
    x_img, wdw_ptr, g_img, dx_img, pid_q, pid_c,
    C, H, W, HO, WO,
    STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr, K: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, ROUND_BF16: tl.constexpr,
):
    """Input tile ``pid_q`` × channel block ``pid_c`` of one image: dx = (x > 0) * transposed depthwise conv
    of g (``g_img`` [C, HO, WO] fp32; ``x_img`` / ``dx_img`` [C, H, W])."""
    Q = H * W
    P = HO * WO
    ih, iw, offs_q, mask_q = pixel_tile(pid_q, H, W, BLOCK_Q, BLOCK_W)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C

    acc = tl.zeros((BLOCK_Q, BLOCK_C), dtype=tl.float32)
    for kh in tl.static_range(K):
        th = ih + (PAD - kh * DIL)  # = oh * STRIDE when this tap reaches an output row
        th_c = tl.maximum(th, 0)  # divide only non-negative numbers: // and % differ for negatives across backends
        oh = th_c // STRIDE
        ok_h = (th >= 0) & (th_c % STRIDE == 0) & (oh < HO)
        for kw in tl.static_range(K):
            tw = iw + (PAD - kw * DIL)
            tw_c = tl.maximum(tw, 0)
            ow = tw_c // STRIDE
            ok = mask_q & ok_h & (tw >= 0) & (tw_c % STRIDE == 0) & (ow < WO)
            gv = tl.load(g_img + offs_c[None, :] * P + (oh * WO + ow)[:, None],
                         mask=ok[:, None] & mask_c[None, :], other=0.0)
            wt = tl.load(wdw_ptr + offs_c * (K * K) + (kh * K + kw), mask=mask_c, other=0.0).to(tl.float32)
            acc += gv * wt[None, :]

    offs = offs_c[None, :] * Q + offs_q[:, None]
    mask = mask_q[:, None] & mask_c[None, :]
    xv = tl.load(x_img + offs, mask=mask, other=0.0).to(tl.float32)
    dx = tl.where(xv > 0, acc, 0.0)
    tl.store(dx_img + offs, cast_out(dx, dx_img, ROUND_BF16), mask=mask)


@jit
def _dwpw_bwd_dx_kernel(
    x_ptr, wdw_ptr, g_ptr, dx_ptr,
    C, H, W, HO, WO,
    STRIDE: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr, K: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, ROUND_BF16: tl.constexpr,
):
    """Grid (pixel tiles of H×W, cdiv(C, BLOCK_C), N): dx = (x > 0) * transposed depthwise conv of g."""
    n = tl.program_id(2).to(tl.int64)
    img = n * C * H * W
    bwd_dx_tile(x_ptr + img, wdw_ptr, g_ptr + n * C * HO * WO, dx_ptr + img, tl.program_id(0), tl.program_id(1),
                C, H, W, HO, WO, STRIDE, PAD, DIL, K, BLOCK_Q, BLOCK_W, BLOCK_C, ROUND_BF16)


# ----------------------------------------------------------------------------------------------------------
# Block sizes and launchers
# ----------------------------------------------------------------------------------------------------------

class _Blocks(NamedTuple):
    p: int  # output pixels per program (forward and backward part 1): a (p // pw) × pw rectangle
    pw: int  # its width
    c: int  # input channels per inner step (forward, part 1) and per program (part 2, dx)
    co: int  # all output channels, padded to a power of two
    q: int  # input pixels per program (part 2, dx): a (q // qw) × qw rectangle
    qw: int  # its width
    num_warps: int


def _pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


def _tile(height: int, width: int, most: int) -> tuple[int, int]:
    """(pixels, width) of a power-of-two rectangle of at least 16 and at most ``most`` pixels covering as much of
    a height × width image as it can: whole rows (width rounded up to a power of two) while they fit."""
    block_w = _pow2(width, 1, most)
    return _pow2(triton.next_power_of_2(height) * block_w, 16, most), block_w


def grid_tiles(height: int, width: int, block: int, block_w: int) -> int:
    """Programs covering a ``height × width`` plane in tiles of ``block`` pixels, ``block_w`` of them per row."""
    return triton.cdiv(height, max(1, block // block_w)) * triton.cdiv(width, block_w)


def block_sizes(ho: int, wo: int, h: int, w: int, c: int, c_out: int, stride: int, interpreted: bool) -> _Blocks:
    """Tile sizes from the shapes. ``tl.dot`` needs every dimension ≥ 16.

    ``BLOCK_CO = next_pow2(C_out)`` (≥ 16) always: a program owns all output channels. Pixel tiles are
    power-of-two rectangles of whole image rows where possible (``_tile``). Under the interpreter (which costs
    ~1.3 ms per program and runs each tile op as one numpy call) the tiles are as large as the problem allows,
    up to 256 pixels and ``BLOCK_C`` up to 64 channels, so a small test launches a handful of programs. On a
    GPU the [BLOCK_P, BLOCK_CO] fp32 accumulator is capped at 8192 elements (``BLOCK_P`` ≤
    ``clamp(8192 // BLOCK_CO, 16, 128)``, and ≤ 64 for stride > 1, whose gathers are not contiguous),
    ``BLOCK_C`` is 16, the dx kernel takes up to 128 pixels × 16 channels and every kernel runs 8 warps. With
    the 25 unrolled taps of k=5 this keeps ptxas (Triton 3.8, sm_80 and sm_90, C_out 16/36/144) at ≤ 255
    registers and ≲ 1 KB of spills (most configurations none); 4-warp 128×32 tiles spilled 10+ KB.
    """
    co = _pow2(c_out, 16, 1 << 30)
    if interpreted:
        (p, pw), (q, qw) = _tile(ho, wo, 256), _tile(h, w, 256)
        return _Blocks(p=p, pw=pw, c=_pow2(c, 16, 64), co=co, q=q, qw=qw, num_warps=4)
    (p, pw), (q, qw) = _tile(ho, wo, max(16, min(128 if stride == 1 else 64, 8192 // co))), _tile(h, w, 128)
    return _Blocks(p=p, pw=pw, c=16, co=co, q=q, qw=qw, num_warps=8)


def _output_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _check(x: torch.Tensor, w_dw: torch.Tensor, w_pw: torch.Tensor, stride: int, padding: int,
           dilation: int) -> tuple[int, int]:
    """Validate the arguments; return the output size (Ho, Wo)."""
    check_device(x)
    if x.dim() != 4:
        raise ValueError(f"x must be [N, C, H, W], got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if w_dw.dim() != 4 or w_dw.shape[0] != c or w_dw.shape[1] != 1 or w_dw.shape[2] != w_dw.shape[3]:
        raise ValueError(f"w_dw must be [C={c}, 1, k, k], got shape {tuple(w_dw.shape)}")
    if w_pw.dim() != 4 or w_pw.shape[1] != c or w_pw.shape[2:] != (1, 1):
        raise ValueError(f"w_pw must be [C_out, C={c}, 1, 1], got shape {tuple(w_pw.shape)}")
    if stride < 1 or padding < 0 or dilation < 1:
        raise ValueError(f"need stride >= 1, padding >= 0, dilation >= 1; got {stride}, {padding}, {dilation}")
    k = w_dw.shape[2]
    ho, wo = _output_size(h, k, stride, padding, dilation), _output_size(w, k, stride, padding, dilation)
    if ho < 1 or wo < 1:
        raise ValueError(f"empty output: input {h}x{w} with k={k}, stride={stride}, padding={padding}, "
                         f"dilation={dilation}")
    return ho, wo


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision for tensors of ``dtype``: exact fp32 products for fp32 and fp64."""
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def dwpw_forward(x: torch.Tensor, w_dw: torch.Tensor, w_pw: torch.Tensor, stride: int, padding: int,
                 dilation: int) -> torch.Tensor:
    """``conv1x1(conv_dw(relu(x)))`` in one Triton kernel; returns contiguous NCHW ``y`` in ``x.dtype``."""
    ho, wo = _check(x, w_dw, w_pw, stride, padding, dilation)
    x, w_dw, w_pw = x.contiguous(), w_dw.contiguous(), w_pw.contiguous()
    n, c, h, w = x.shape
    c_out, k = w_pw.shape[0], w_dw.shape[2]
    y = torch.empty((n, c_out, ho, wo), device=x.device, dtype=x.dtype)
    if n == 0:
        return y
    b = block_sizes(ho, wo, h, w, c, c_out, stride, interpreted(x))
    launcher(_dwpw_fwd_kernel, x)[(grid_tiles(ho, wo, b.p, b.pw), n)](
        x, w_dw, w_pw, y, c, c_out, h, w, ho, wo,
        STRIDE=stride, PAD=padding, DIL=dilation, K=k,
        BLOCK_P=b.p, BLOCK_W=b.pw, BLOCK_C=b.c, BLOCK_CO=b.co, DOT_PRECISION=dot_precision(x.dtype),
        ROUND_BF16=x.dtype == torch.bfloat16, num_warps=b.num_warps,
    )
    return y


def dwpw_backward(dy: torch.Tensor, x: torch.Tensor, w_dw: torch.Tensor, w_pw: torch.Tensor, stride: int,
                  padding: int, dilation: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(dx, d w_dw, d w_pw)`` of ``dwpw_forward`` given ``dy``; recomputes the activation from ``x``.

    Two launches: part 1 writes the depthwise-output gradient to a temporary fp32 buffer [N, C, Ho, Wo] and
    reduces both weight gradients across programs with fp32 ``tl.atomic_add`` (so their summation order, and
    their last bits, may vary between GPU runs); part 2 turns that buffer into ``dx``. ``dx`` has ``x``'s
    dtype, the weight gradients their weights' dtype and shape.
    """
    ho, wo = _check(x, w_dw, w_pw, stride, padding, dilation)
    x, w_dw, w_pw = x.contiguous(), w_dw.contiguous(), w_pw.contiguous()
    n, c, h, w = x.shape
    c_out, k = w_pw.shape[0], w_dw.shape[2]
    if dy.shape != (n, c_out, ho, wo):
        raise ValueError(f"dy must be {(n, c_out, ho, wo)}, got shape {tuple(dy.shape)}")
    dy = dy.contiguous()
    dx = torch.empty_like(x)
    g_wdw = torch.zeros((c, k * k), device=x.device, dtype=torch.float32)
    g_wpw = torch.zeros((c_out, c), device=x.device, dtype=torch.float32)
    if n > 0:
        b = block_sizes(ho, wo, h, w, c, c_out, stride, interpreted(x))
        g = torch.empty((n, c, ho, wo), device=x.device, dtype=torch.float32)
        launcher(_dwpw_bwd_act_kernel, x)[(grid_tiles(ho, wo, b.p, b.pw), n)](
            x, w_dw, w_pw, dy, g, g_wdw, g_wpw, c, c_out, h, w, ho, wo,
            STRIDE=stride, PAD=padding, DIL=dilation, K=k,
            BLOCK_P=b.p, BLOCK_W=b.pw, BLOCK_C=b.c, BLOCK_CO=b.co, DOT_PRECISION=dot_precision(x.dtype),
            num_warps=b.num_warps,
        )
        launcher(_dwpw_bwd_dx_kernel, x)[(grid_tiles(h, w, b.q, b.qw), triton.cdiv(c, b.c), n)](
            x, w_dw, g, dx, c, h, w, ho, wo,
            STRIDE=stride, PAD=padding, DIL=dilation, K=k, BLOCK_Q=b.q, BLOCK_W=b.qw, BLOCK_C=b.c,
            ROUND_BF16=x.dtype == torch.bfloat16, num_warps=b.num_warps,
        )
    return dx, g_wdw.view(c, 1, k, k).to(w_dw.dtype), g_wpw.view(c_out, c, 1, 1).to(w_pw.dtype)


# ----------------------------------------------------------------------------------------------------------
# Autograd and reference
# ----------------------------------------------------------------------------------------------------------


@torch.library.custom_op("sswp_fast::relu_dw_pw", mutates_args=())
def _relu_dw_pw_op(x: torch.Tensor, w_dw: torch.Tensor, w_pw: torch.Tensor, stride: int, padding: int,
                   dilation: int) -> torch.Tensor:
    return dwpw_forward(x, w_dw, w_pw, stride, padding, dilation)


@torch.library.custom_op("sswp_fast::relu_dw_pw_backward", mutates_args=())
def _relu_dw_pw_backward_op(dy: torch.Tensor, x: torch.Tensor, w_dw: torch.Tensor, w_pw: torch.Tensor, stride: int,
                            padding: int, dilation: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return dwpw_backward(dy, x, w_dw, w_pw, stride, padding, dilation)


@_relu_dw_pw_op.register_fake
def _(x, w_dw, w_pw, stride, padding, dilation):
    n, _, h, w = x.shape
    k = w_dw.shape[2]
    return x.new_empty((n, w_pw.shape[0], _output_size(h, k, stride, padding, dilation),
                        _output_size(w, k, stride, padding, dilation)))


@_relu_dw_pw_backward_op.register_fake
def _(dy, x, w_dw, w_pw, stride, padding, dilation):
    return x.new_empty(x.shape), w_dw.new_empty(w_dw.shape), w_pw.new_empty(w_pw.shape)


def _setup_context(ctx, inputs, output) -> None:
    x, w_dw, w_pw, stride, padding, dilation = inputs
    ctx.save_for_backward(x, w_dw, w_pw)
    ctx.conv = (stride, padding, dilation)


def _backward(ctx, dy: torch.Tensor):
    x, w_dw, w_pw = ctx.saved_tensors
    dx, g_wdw, g_wpw = torch.ops.sswp_fast.relu_dw_pw_backward(dy, x, w_dw, w_pw, *ctx.conv)
    need = ctx.needs_input_grad
    return dx if need[0] else None, g_wdw if need[1] else None, g_wpw if need[2] else None, None, None, None


_relu_dw_pw_op.register_autograd(_backward, setup_context=_setup_context)


def relu_dw_pw(x: torch.Tensor, w_dw: torch.Tensor, w_pw: torch.Tensor, stride: int, padding: int,
               dilation: int) -> torch.Tensor:
    """Differentiable fused ``conv1x1(conv_dw(relu(x)))`` as the custom op ``torch.ops.sswp_fast.relu_dw_pw``:
    autograd saves only ``x``, ``w_dw`` and ``w_pw``, and the backward op recomputes the depthwise activation."""
    return torch.ops.sswp_fast.relu_dw_pw(x, w_dw, w_pw, stride, padding, dilation)


def dwpw_reference(x: torch.Tensor, w_dw: torch.Tensor, w_pw: torch.Tensor, stride: int, padding: int,
                   dilation: int) -> torch.Tensor:
    """Pure-PyTorch reference: ``F.relu`` → depthwise ``F.conv2d(groups=C)`` → 1×1 ``F.conv2d``, no bias."""
    h = F.conv2d(F.relu(x), w_dw, stride=stride, padding=padding, dilation=dilation, groups=x.shape[1])
    return F.conv2d(h, w_pw)
