"""Sampled 3×3 pooling: the tile functions that run a slot's max or average pool inside the sampled first-stage
kernels of :mod:`.sampled_dwpw`, and their PyTorch reference.

The two pools of the DARTS space (``max_pool_3x3`` and ``avg_pool_3x3``, padding 1, the average without the
padded cells) are parameter-free and cheap. A slot group's first stage runs, per slot, one of the convolution
variants or one of the pools, chosen on the device; the pools are branches of the same launch
(:func:`~.sampled_dwpw.sampled_dwpw` with ``pool``), so a group pays no launch of its own for them, forward or
backward, and its input gets one gradient, not a sum of the convolutions' and the pools'.

Layout, as in :mod:`.sampled_dwpw`: ``x`` is [N, G*C, H, W] with slot ``g`` in channels ``g*C:(g+1)*C``;
``pool`` is a [G] integer tensor on the device, ``pool[g] = 0`` (``MAX``) max-pools slot ``g``, ``1`` (``AVG``)
average-pools it, a negative value pools nothing. The output is [N, G*C, Ho, Wo] with
``Ho = (H - 1) // stride + 1``.

The backward tile recomputes each window rather than storing argmax indices: every input pixel gathers the
gradients of the windows that cover it (no atomics); a max window sends its gradient to its first maximum in
row-major order, as PyTorch's ``max_pool2d`` does.

Contents: ``pool_fwd_tile`` and ``pool_bwd_tile`` (``@triton.jit``, one image's slot, in the tile layouts of
:mod:`.dwpw`), the PyTorch reference of one slot's pool, ``pool_reference``, and its gradient
``pool_reference_backward`` (explicit, for a custom op's PyTorch kernel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton.language as tl

from .common import cast_out, jit
from .dwpw import pixel_tile

__all__ = ["AVG", "MAX", "pool_bwd_tile", "pool_fwd_tile", "pool_output_size", "pool_reference",
           "pool_reference_backward"]

MAX, AVG = 0, 1
"""``pool`` values: max pooling, average pooling (any negative value: neither)."""


@jit
def _window(x_plane, oh, ow, H, W, valid_out, STRIDE: tl.constexpr, IS_MAX: tl.constexpr):
    """Over the 3×3 windows at ``(oh, ow)`` (padding 1; ``x_plane`` channel pointers and ``oh``, ``ow`` broadcast
    to ``valid_out``'s shape), in fp32: ``(max, flat index of its first maximum in row-major order)`` with
    ``IS_MAX``, else ``(sum, count)`` of the cells inside the image."""
    if IS_MAX:
        best = tl.full(valid_out.shape, float("-inf"), tl.float32)
        where = tl.full(valid_out.shape, -1, tl.int32)
    else:
        best = tl.zeros(valid_out.shape, tl.float32)
        where = tl.zeros(valid_out.shape, tl.int32)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            ih = oh * STRIDE - 1 + kh
            iw = ow * STRIDE - 1 + kw
            valid = valid_out & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            if IS_MAX:
                v = tl.load(x_plane + ih * W + iw, mask=valid, other=float("-inf")).to(tl.float32)
                better = valid & (v > best)
                best = tl.where(better, v, best)
                where = tl.where(better, ih * W + iw, where)
            else:
                v = tl.load(x_plane + ih * W + iw, mask=valid, other=0.0).to(tl.float32)
                best += v
                where += valid.to(tl.int32)
    return best, where


@jit
def pool_fwd_tile(x_img, y_img, pid_p, C, H, W, HO, WO, STRIDE: tl.constexpr, IS_MAX: tl.constexpr,
                  BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_CO: tl.constexpr, ROUND_BF16: tl.constexpr):
    """Output tile ``pid_p`` of one image's slot (the tile :func:`.dwpw.fwd_tile` writes: ``BLOCK_P`` pixels ×
    all ``C <= BLOCK_CO`` channels; ``x_img`` [C, H, W], ``y_img`` [C, HO, WO]): its max pool with ``IS_MAX``,
    else its average pool."""
    oh, ow, offs_p, mask_p = pixel_tile(pid_p, HO, WO, BLOCK_P, BLOCK_W)
    offs_c = tl.arange(0, BLOCK_CO)
    mask = mask_p[:, None] & (offs_c < C)[None, :]
    best, where = _window(x_img + offs_c[None, :] * (H * W), oh[:, None], ow[:, None], H, W, mask, STRIDE, IS_MAX)
    out = best if IS_MAX else best / tl.maximum(where, 1).to(tl.float32)
    tl.store(y_img + offs_c[None, :] * (HO * WO) + offs_p[:, None], cast_out(out, y_img, ROUND_BF16), mask=mask)


@jit
def pool_bwd_tile(x_img, dy_img, dx_img, pid_q, pid_c, C, H, W, HO, WO, STRIDE: tl.constexpr, IS_MAX: tl.constexpr,
                  BLOCK_Q: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, ROUND_BF16: tl.constexpr):
    """Input tile ``pid_q`` × channel block ``pid_c`` of one image's slot (the tile :func:`.dwpw.bwd_dx_tile`
    writes; ``dy_img`` [C, HO, WO]): each input pixel sums the gradients of the windows covering it (for max
    pooling, of those whose first maximum it is)."""
    ih, iw, offs_q, mask_q = pixel_tile(pid_q, H, W, BLOCK_Q, BLOCK_W)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = mask_q[:, None] & (offs_c < C)[None, :]
    x_plane = x_img + offs_c[None, :] * (H * W)
    here = (ih * W + iw)[:, None]
    dx = tl.zeros((BLOCK_Q, BLOCK_C), tl.float32)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            th = ih + 1 - kh  # the window whose cell (kh, kw) is this pixel starts at row th * STRIDE - 1
            tw = iw + 1 - kw
            th_c = tl.maximum(th, 0)  # divide only non-negative numbers, as dwpw.bwd_dx_tile does
            tw_c = tl.maximum(tw, 0)
            oh = (th_c // STRIDE)[:, None]
            ow = (tw_c // STRIDE)[:, None]
            covers = (mask & ((th >= 0) & (tw >= 0) & (th_c % STRIDE == 0) & (tw_c % STRIDE == 0))[:, None]
                      & (oh < HO) & (ow < WO))
            grad = tl.load(dy_img + offs_c[None, :] * (HO * WO) + oh * WO + ow, mask=covers, other=0.0)
            grad = grad.to(tl.float32)
            if IS_MAX:
                _, first = _window(x_plane, oh, ow, H, W, covers, STRIDE, True)
                dx += tl.where(covers & (first == here), grad, 0.0)
            else:
                _, count = _window(x_plane, oh, ow, H, W, covers, STRIDE, False)
                dx += tl.where(covers, grad / tl.maximum(count, 1).to(tl.float32), 0.0)
    tl.store(dx_img + offs_c[None, :] * (H * W) + offs_q[:, None], cast_out(dx, dx_img, ROUND_BF16), mask=mask)


def pool_output_size(size: int, stride: int) -> int:
    """Output rows (or columns) of a 3×3 pool with padding 1."""
    return (size - 1) // stride + 1


def pool_reference(x: torch.Tensor, kind: int, stride: int) -> torch.Tensor:
    """PyTorch's pool ``kind`` (``MAX`` or ``AVG``) of ``x`` [N, C, H, W]: what a slot that runs it computes."""
    if kind == MAX:
        return F.max_pool2d(x, 3, stride, 1)
    return F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)


def pool_reference_backward(dy: torch.Tensor, x: torch.Tensor, kind: int, stride: int) -> torch.Tensor:
    """The input gradient of :func:`pool_reference`, explicit (a custom op's kernel runs below autograd)."""
    if kind == MAX:
        _, indices = torch.ops.aten.max_pool2d_with_indices(x, [3, 3], [stride, stride], [1, 1])
        return torch.ops.aten.max_pool2d_with_indices_backward(dy, x, [3, 3], [stride, stride], [1, 1], [1, 1],
                                                                False, indices)
    return torch.ops.aten.avg_pool2d_backward(dy, x, [3, 3], [stride, stride], [1, 1], False, False, None)
