"""Sampled 3×3 pooling for a group of edges: max or average pooling per slot, chosen on the device.

The two pools of the DARTS space (``max_pool_3x3`` and ``avg_pool_3x3``, padding 1, the average without the
padded cells) are parameter-free and cheap, but evaluating both for every slot of a group, and selecting, costs
two pooling launches, two selections and their backward passes per group, and the FLOPs of pools that no slot
sampled. Here one launch pools every slot with the pool its device-side index selects, and leaves the other slots
zero; its backward is one launch too.

Layout, as in :mod:`.sampled_dwpw`: ``x`` is [N, G*C, H, W] with slot ``g`` in channels ``g*C:(g+1)*C``;
``pool`` is a [G] integer tensor on the device, ``pool[g] = 0`` max-pools slot ``g``, ``1`` average-pools it, a
negative value leaves the slot's output (and its input gradient) zero. The output is [N, G*C, Ho, Wo] with
``Ho = (H - 1) // stride + 1``; given ``base`` of that shape (the sampled convolution's output, zero where a slot
pools), the output is ``base`` plus the pools, added in the same launch (one launch and one pass over the output
fewer than adding them after; ``base``'s gradient is the output's, with no launch).

The backward pass recomputes each window rather than storing argmax indices: every input pixel gathers the
gradients of the windows that cover it (no atomics); a max window sends its gradient to its first maximum in
row-major order, as PyTorch's ``max_pool2d`` does.

Contents: ``_pool_fwd_kernel``, ``_pool_bwd_kernel``, the launchers ``sampled_pool_forward`` /
``sampled_pool_backward``, the custom ops ``sswp_fast::sampled_pool`` (autograd and fake kernels) and
``sswp_fast::sampled_pool_backward``, the entry point ``sampled_pool`` and the PyTorch reference
``sampled_pool_reference`` (the op's kernel for CPU tensors outside the interpreter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import _common
from ._common import cast_out

__all__ = ["MAX", "AVG", "sampled_pool", "sampled_pool_backward", "sampled_pool_forward", "sampled_pool_reference"]

MAX, AVG = 0, 1
"""``pool`` values: max pooling, average pooling (any negative value: neither)."""

_MAX_BLOCK_R = 64
"""A program covers up to this many rows (image, channel) of one slot..."""
_BLOCK_ELEMENTS = 4096
"""... and up to this many elements in all (rows × pixels)."""


@triton.jit
def _window(x_plane, oh, ow, H, W, valid_out, STRIDE: tl.constexpr, IS_MAX: tl.constexpr):
    """Over the 3×3 windows at ``(oh, ow)`` (padding 1; ``x_plane`` ``[BLOCK_C, 1]`` channel pointers, the rest
    ``[1, BLOCK_P]`` or broadcast to ``[BLOCK_C, BLOCK_P]``), in fp32: ``(max, flat index of its first maximum in
    row-major order)`` with ``IS_MAX``, else ``(sum, count)`` of the cells inside the image."""
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


@triton.jit
def _pool_fwd_kernel(x_ptr, pool_ptr, base_ptr, y_ptr, N, G, C, H, W, HO, WO, STRIDE: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, ROUND_BF16: tl.constexpr, HAS_BASE: tl.constexpr):
    """Grid (output pixel tiles, G, row tiles): rows (image n, channel c) of slot g through its pool (zeros for
    none), plus ``base`` with ``HAS_BASE``."""
    g = tl.program_id(1).to(tl.int64)
    kind = tl.load(pool_ptr + g)
    offs = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]
    row = tl.program_id(2) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    mask = (offs < HO * WO) & (row < N * C)
    oh = offs // WO
    ow = offs % WO
    planes = ((row // C) * G + g) * C + row % C
    x_plane = x_ptr + planes * H * W
    out = tl.zeros((BLOCK_R, BLOCK_P), tl.float32)
    if kind == 0:
        out, _ = _window(x_plane, oh, ow, H, W, mask, STRIDE, True)
    elif kind == 1:
        total, count = _window(x_plane, oh, ow, H, W, mask, STRIDE, False)
        out = total / tl.maximum(count, 1).to(tl.float32)
    if HAS_BASE:
        out += tl.load(base_ptr + planes * HO * WO + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + planes * HO * WO + offs, cast_out(out, y_ptr, ROUND_BF16), mask=mask)


@triton.jit
def _pool_bwd_kernel(x_ptr, pool_ptr, dy_ptr, dx_ptr, N, G, C, H, W, HO, WO, STRIDE: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, ROUND_BF16: tl.constexpr):
    """Grid (input pixel tiles, G, row tiles): each input pixel of slot g sums the gradients of the windows
    covering it (for max pooling, of those whose first maximum it is)."""
    g = tl.program_id(1).to(tl.int64)
    kind = tl.load(pool_ptr + g)
    offs = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]
    row = tl.program_id(2) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    mask = (offs < H * W) & (row < N * C)
    ih = offs // W
    iw = offs % W
    planes = ((row // C) * G + g) * C + row % C
    x_plane = x_ptr + planes * H * W
    dy_plane = dy_ptr + planes * HO * WO
    dx = tl.zeros((BLOCK_R, BLOCK_P), tl.float32)
    if kind >= 0:
        for kh in tl.static_range(3):
            for kw in tl.static_range(3):
                th = ih + 1 - kh  # the window whose cell (kh, kw) is this pixel starts at row th * STRIDE - 1
                tw = iw + 1 - kw
                oh = th // STRIDE
                ow = tw // STRIDE
                covers = (mask & (th >= 0) & (tw >= 0) & (th % STRIDE == 0) & (tw % STRIDE == 0)
                          & (oh < HO) & (ow < WO))
                grad = tl.load(dy_plane + oh * WO + ow, mask=covers, other=0.0).to(tl.float32)
                if kind == 0:
                    _, first = _window(x_plane, oh, ow, H, W, covers, STRIDE, True)
                    dx += tl.where(covers & (first == offs), grad, 0.0)
                else:
                    _, count = _window(x_plane, oh, ow, H, W, covers, STRIDE, False)
                    dx += tl.where(covers, grad / tl.maximum(count, 1).to(tl.float32), 0.0)
    tl.store(dx_ptr + planes * H * W + offs, cast_out(dx, dx_ptr, ROUND_BF16), mask=mask)


def _launch(kernel, pixels: int, tensors: tuple[torch.Tensor, ...], n: int, g: int, c: int, h: int, w: int,
            stride: int, **flags: bool) -> None:
    """``kernel`` over (pixel tiles, G slots, row tiles), each program a [rows, pixels] block; ``pixels``: the
    pixels of the tensor it writes."""
    rows = min(triton.next_power_of_2(n * c), _MAX_BLOCK_R)
    block_p = max(16, min(triton.next_power_of_2(pixels), _BLOCK_ELEMENTS // rows))
    kernel[(triton.cdiv(pixels, block_p), g, triton.cdiv(n * c, rows))](
        *tensors, n, g, c, h, w, _output_size(h, stride), _output_size(w, stride), STRIDE=stride, BLOCK_P=block_p,
        BLOCK_R=rows, ROUND_BF16=tensors[0].dtype == torch.bfloat16, **flags)


def _output_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


def _check(x: torch.Tensor, pool: torch.Tensor, stride: int, base: torch.Tensor | None = None) -> int:
    """The slot count G, after checking the shapes."""
    if x.dim() != 4 or pool.dim() != 1 or x.shape[1] % pool.shape[0]:
        raise ValueError(f"x must be [N, G*C, H, W] and pool [G], got {tuple(x.shape)} and {tuple(pool.shape)}")
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    n, gc, h, w = x.shape
    out = (n, gc, _output_size(h, stride), _output_size(w, stride))
    if base is not None and (tuple(base.shape) != out or base.dtype != x.dtype):
        raise ValueError(f"base must be {out} in {x.dtype}, got {tuple(base.shape)} in {base.dtype}")
    return pool.shape[0]


def sampled_pool_forward(x: torch.Tensor, pool: torch.Tensor, stride: int,
                         base: torch.Tensor | None = None) -> torch.Tensor:
    """Every slot of ``x`` through the pool ``pool`` selects (zero for none), plus ``base`` if given: one launch."""
    g = _check(x, pool, stride, base)
    _common.check_device(x, pool, base)
    x = x.contiguous()
    n, gc, h, w = x.shape
    ho, wo = _output_size(h, stride), _output_size(w, stride)
    y = torch.empty((n, gc, ho, wo), device=x.device, dtype=x.dtype)
    if y.numel():
        base_arg = y if base is None else base.contiguous()
        _launch(_pool_fwd_kernel, ho * wo, (x, pool, base_arg, y), n, g, gc // g, h, w, stride,
                HAS_BASE=base is not None)
    return y


def sampled_pool_backward(dy: torch.Tensor, x: torch.Tensor, pool: torch.Tensor, stride: int) -> torch.Tensor:
    """``dx`` of :func:`sampled_pool_forward` (zero in the slots that pooled nothing): one launch."""
    g = _check(x, pool, stride)
    _common.check_device(dy, x, pool)
    x = x.contiguous()
    n, gc, h, w = x.shape
    ho, wo = _output_size(h, stride), _output_size(w, stride)
    if dy.shape != (n, gc, ho, wo):
        raise ValueError(f"dy must be {(n, gc, ho, wo)}, got shape {tuple(dy.shape)}")
    dx = torch.empty_like(x)
    if dx.numel():
        _launch(_pool_bwd_kernel, h * w, (x, pool, dy.contiguous(), dx), n, g, gc // g, h, w, stride)
    return dx


def _slot_mask(pool: torch.Tensor, kind: int) -> torch.Tensor:
    """``[1, G, 1, 1, 1]``: which slots run pool ``kind``."""
    return (pool == kind).view(1, -1, 1, 1, 1)


def _per_slot(t: torch.Tensor, g: int) -> torch.Tensor:
    return t.view(t.shape[0], g, -1, *t.shape[2:])


def sampled_pool_reference(x: torch.Tensor, pool: torch.Tensor, stride: int,
                           base: torch.Tensor | None = None) -> torch.Tensor:
    """Pure PyTorch, no host read: both pools of every slot, each kept where its slot chose it (plus ``base``)."""
    g = _check(x, pool, stride, base)
    pools = (F.max_pool2d(x, 3, stride, 1), F.avg_pool2d(x, 3, stride, 1, count_include_pad=False))
    out = torch.zeros_like(_per_slot(pools[MAX], g))
    for kind, pooled in enumerate(pools):
        out = torch.where(_slot_mask(pool, kind), _per_slot(pooled, g), out)
    out = out.view_as(pools[MAX])
    if base is None:
        return out
    acc = torch.promote_types(x.dtype, torch.float32)  # as the kernel adds: one rounding of the sum
    return (out.to(acc) + base.to(acc)).to(x.dtype)


def _reference_backward(dy: torch.Tensor, x: torch.Tensor, pool: torch.Tensor, stride: int) -> torch.Tensor:
    """:func:`sampled_pool_backward` in PyTorch (explicit pooling gradients: a custom op's kernel runs below
    autograd)."""
    g = _check(x, pool, stride)
    _, indices = torch.ops.aten.max_pool2d_with_indices(x, [3, 3], [stride, stride], [1, 1])
    grads = (torch.ops.aten.max_pool2d_with_indices_backward(dy, x, [3, 3], [stride, stride], [1, 1], [1, 1], False,
                                                               indices),
             torch.ops.aten.avg_pool2d_backward(dy, x, [3, 3], [stride, stride], [1, 1], False, False, None))
    dx = torch.zeros_like(_per_slot(x, g))
    for kind, grad in enumerate(grads):
        dx = torch.where(_slot_mask(pool, kind), _per_slot(grad, g), dx)
    return dx.view_as(x)


@torch.library.custom_op("sswp_fast::sampled_pool", mutates_args=())
def _sampled_pool_op(x: torch.Tensor, pool: torch.Tensor, stride: int, base: torch.Tensor | None) -> torch.Tensor:
    if _common.runs_on_triton(x):
        return sampled_pool_forward(x, pool, stride, base)
    return sampled_pool_reference(x, pool, stride, base).contiguous()


@torch.library.custom_op("sswp_fast::sampled_pool_backward", mutates_args=())
def _sampled_pool_backward_op(dy: torch.Tensor, x: torch.Tensor, pool: torch.Tensor, stride: int) -> torch.Tensor:
    if _common.runs_on_triton(x):
        return sampled_pool_backward(dy, x, pool, stride)
    return _reference_backward(dy, x, pool, stride).contiguous()


@_sampled_pool_op.register_fake
def _(x, pool, stride, base):
    n, gc, h, w = x.shape
    return x.new_empty((n, gc, _output_size(h, stride), _output_size(w, stride)))


@_sampled_pool_backward_op.register_fake
def _(dy, x, pool, stride):
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output) -> None:
    x, pool, stride, base = inputs
    ctx.save_for_backward(x, pool)
    ctx.stride = stride
    ctx.has_base = base is not None


def _backward(ctx, dy: torch.Tensor):
    x, pool = ctx.saved_tensors
    dx = torch.ops.sswp_fast.sampled_pool_backward(dy, x, pool, ctx.stride) if ctx.needs_input_grad[0] else None
    return dx, None, None, dy if ctx.has_base else None


_sampled_pool_op.register_autograd(_backward, setup_context=_setup_context)


def sampled_pool(x: torch.Tensor, pool: torch.Tensor, stride: int, base: torch.Tensor | None = None) -> torch.Tensor:
    """Differentiable :func:`sampled_pool_forward` as the custom op ``torch.ops.sswp_fast.sampled_pool`` (one call
    for ``torch.compile``): the Triton kernels on CUDA (and on CPU under the interpreter), the PyTorch reference
    on other CPU tensors. Autograd saves ``x`` and ``pool`` only."""
    return torch.ops.sswp_fast.sampled_pool(x, pool, stride, base)
