"""A node's sum over its slots, each slot taking the output its sampled op produced: one launch, and one back.

A slot group (:mod:`sswp_fast.search.executors.device`) evaluates every slot's op as stacked tensors ``[N, G*C, H, W]``
(slot ``g`` in channels ``g*C:(g+1)*C``): ``first``, the first stage after its BatchNorm (pools, dilated convolutions,
the stride-2 skip); ``second``, the ``sep_conv`` second half after its BatchNorm; ``skip``, the stride-1 skip (the
group's input). Which of them slot ``g`` ran is ``source[g]`` (:data:`FIRST`, :data:`SECOND`, :data:`SKIP`, or
:data:`NONE` for a dropped edge), a [G] integer tensor on the device. The node's part is

    out[n, c] = sum_g scale[g] * source_g[n, g*C + c]

with ``scale`` (the one-hot gates of gate-gradient arch steps) optional, plus ``base`` ``[N, C, H, W]`` when given
(the node's part from another group, or another path's: one addition fewer, and its gradient is ``dout``). In
PyTorch that is two selections, a masked fill, a product and a sum, and twice as many operations in the backward
pass; here it is one launch each way, and the backward pass reads nothing but ``dout`` (and the sources only for
``scale``'s gradient).

Contents: ``_slot_sum_fwd_kernel``, ``_slot_sum_bwd_kernel``, the launchers ``slot_sum_forward`` /
``slot_sum_backward``, the custom ops ``sswp_fast::slot_sum`` (autograd and fake kernels) and
``sswp_fast::slot_sum_backward``, the entry point ``slot_sum`` and the PyTorch reference ``slot_sum_reference``
(the op's kernel for CPU tensors outside the interpreter).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import common
from .common import cast_out, jit, launcher

__all__ = ["FIRST", "NONE", "SECOND", "SKIP", "slot_sum", "slot_sum_backward", "slot_sum_forward",
           "slot_sum_reference"]

FIRST, SECOND, SKIP, NONE = 0, 1, 2, 3
"""``source`` values: the slot's output is ``first``, ``second``, ``skip``, or nothing (a dropped edge)."""

_MAX_BLOCK_R = 64
"""A program covers up to this many rows (image, channel)..."""
_BLOCK_ELEMENTS = 4096
"""... and up to this many elements in all (rows × pixels)."""


@jit
def _tile(pid_p, pid_r, N, C, HW, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr):
    """A program's ``[BLOCK_R, BLOCK_P]`` tile of rows (image n, channel c) × pixels: (n, c, pixel offsets,
    mask)."""
    offs = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]
    row = (pid_r * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]).to(tl.int64)
    return row // C, row % C, offs, (offs < HW) & (row < N * C)


@jit
def _slot_sum_fwd_kernel(first_ptr, second_ptr, skip_ptr, source_ptr, scale_ptr, base_ptr, out_ptr, N, G, C, HW,
                         HAS_SKIP: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_BASE: tl.constexpr,
                         BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, ROUND_BF16: tl.constexpr):
    """Grid (pixel tiles, row tiles): the sum over the G slots of each slot's chosen source, scaled (plus
    ``base``)."""
    n, c, offs, mask = _tile(tl.program_id(0), tl.program_id(1), N, C, HW, BLOCK_P, BLOCK_R)
    acc = tl.zeros((BLOCK_R, BLOCK_P), tl.float32)
    if HAS_BASE:
        acc = tl.load(base_ptr + (n * C + c) * HW + offs, mask=mask, other=0.0).to(tl.float32)
    for g in range(G):
        code = tl.load(source_ptr + g)
        plane = ((n * G + g) * C + c) * HW + offs
        v = tl.zeros((BLOCK_R, BLOCK_P), tl.float32)
        if code == 0:
            v = tl.load(first_ptr + plane, mask=mask, other=0.0).to(tl.float32)
        elif code == 1:
            v = tl.load(second_ptr + plane, mask=mask, other=0.0).to(tl.float32)
        elif HAS_SKIP and code == 2:
            v = tl.load(skip_ptr + plane, mask=mask, other=0.0).to(tl.float32)
        if HAS_SCALE:
            v = v * tl.load(scale_ptr + g).to(tl.float32)
        acc += v
    tl.store(out_ptr + (n * C + c) * HW + offs, cast_out(acc, out_ptr, ROUND_BF16), mask=mask)


@jit
def _slot_sum_bwd_kernel(dout_ptr, first_ptr, second_ptr, skip_ptr, source_ptr, scale_ptr, dfirst_ptr,
                         dsecond_ptr, dskip_ptr, partial_ptr, N, G, C, HW, HAS_SKIP: tl.constexpr,
                         HAS_SCALE: tl.constexpr, SCALE_GRAD: tl.constexpr, BLOCK_P: tl.constexpr,
                         BLOCK_R: tl.constexpr, ROUND_BF16: tl.constexpr):
    """Grid (pixel tiles, row tiles, G): slot g's gradient (``dout``, scaled) into the source it chose, zeros
    into the others; with ``SCALE_GRAD`` also this tile's part of ``d scale[g]`` = sum(dout * source_g), into
    ``partial[g, tile]``."""
    pid_p, pid_r = tl.program_id(0), tl.program_id(1)
    g = tl.program_id(2).to(tl.int64)
    n, c, offs, mask = _tile(pid_p, pid_r, N, C, HW, BLOCK_P, BLOCK_R)
    code = tl.load(source_ptr + g)
    dout = tl.load(dout_ptr + (n * C + c) * HW + offs, mask=mask, other=0.0).to(tl.float32)
    grad = dout
    if HAS_SCALE:
        grad = dout * tl.load(scale_ptr + g).to(tl.float32)
    plane = ((n * G + g) * C + c) * HW + offs
    tl.store(dfirst_ptr + plane, cast_out(tl.where(code == 0, grad, 0.0), dfirst_ptr, ROUND_BF16), mask=mask)
    tl.store(dsecond_ptr + plane, cast_out(tl.where(code == 1, grad, 0.0), dsecond_ptr, ROUND_BF16), mask=mask)
    if HAS_SKIP:
        tl.store(dskip_ptr + plane, cast_out(tl.where(code == 2, grad, 0.0), dskip_ptr, ROUND_BF16), mask=mask)
    if SCALE_GRAD:
        v = tl.zeros((BLOCK_R, BLOCK_P), tl.float32)
        if code == 0:
            v = tl.load(first_ptr + plane, mask=mask, other=0.0).to(tl.float32)
        elif code == 1:
            v = tl.load(second_ptr + plane, mask=mask, other=0.0).to(tl.float32)
        elif HAS_SKIP and code == 2:
            v = tl.load(skip_ptr + plane, mask=mask, other=0.0).to(tl.float32)
        tiles = tl.num_programs(0) * tl.num_programs(1)
        tl.store(partial_ptr + g * tiles + pid_r * tl.num_programs(0) + pid_p, tl.sum(v * dout))


def _blocks(rows: int, pixels: int) -> tuple[int, int]:
    block_r = min(triton.next_power_of_2(rows), _MAX_BLOCK_R)
    return block_r, max(16, min(triton.next_power_of_2(pixels), _BLOCK_ELEMENTS // block_r))


def _check(first: torch.Tensor, second: torch.Tensor, skip: torch.Tensor | None, source: torch.Tensor,
           scale: torch.Tensor | None, base: torch.Tensor | None = None) -> tuple[int, int, int, int, int]:
    """(N, G, C, H, W), after checking the shapes."""
    if first.dim() != 4 or source.dim() != 1 or first.shape[1] % source.shape[0]:
        raise ValueError(f"first must be [N, G*C, H, W] and source [G], got {tuple(first.shape)} and "
                         f"{tuple(source.shape)}")
    for name, t in (("second", second), ("skip", skip)):
        if t is not None and t.shape != first.shape:
            raise ValueError(f"{name} must have first's shape {tuple(first.shape)}, got {tuple(t.shape)}")
    if scale is not None and scale.shape != source.shape:
        raise ValueError(f"scale must be [G] = {tuple(source.shape)}, got {tuple(scale.shape)}")
    n, gc, h, w = first.shape
    g = source.shape[0]
    if base is not None and tuple(base.shape) != (n, gc // g, h, w):
        raise ValueError(f"base must be [N, C, H, W] = {(n, gc // g, h, w)}, got {tuple(base.shape)}")
    return n, g, gc // g, h, w


def _out_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def slot_sum_forward(first: torch.Tensor, second: torch.Tensor, skip: torch.Tensor | None, source: torch.Tensor,
                     scale: torch.Tensor | None = None, base: torch.Tensor | None = None) -> torch.Tensor:
    """``[N, C, H, W]``: the sum over the slots of each slot's ``source`` (scaled by ``scale``), plus ``base``:
    one launch."""
    n, g, c, h, w = _check(first, second, skip, source, scale, base)
    common.check_device(first, second, skip, source, scale, base)
    first, second, source = first.contiguous(), second.contiguous(), source.contiguous()
    skip = skip.contiguous() if skip is not None else None
    base = base.contiguous() if base is not None else None
    out = torch.empty((n, c, h, w), device=first.device, dtype=_out_dtype(first, second, skip, scale, base))
    if out.numel():
        block_r, block_p = _blocks(n * c, h * w)
        launcher(_slot_sum_fwd_kernel, first)[(triton.cdiv(h * w, block_p), triton.cdiv(n * c, block_r))](
            first, second, first if skip is None else skip, source, source if scale is None else scale,
            out if base is None else base, out, n, g, c, h * w, HAS_SKIP=skip is not None,
            HAS_SCALE=scale is not None, HAS_BASE=base is not None, BLOCK_P=block_p, BLOCK_R=block_r,
            ROUND_BF16=out.dtype == torch.bfloat16)
    return out


def slot_sum_backward(dout: torch.Tensor, source: torch.Tensor, scale: torch.Tensor | None, has_skip: bool,
                      sources: tuple[torch.Tensor, ...] = ()) -> list[torch.Tensor]:
    """The gradients of :func:`slot_sum_forward`, in ``dout``'s dtype: ``[dfirst, dsecond]``, then ``dskip`` with
    ``has_skip``, then, when ``sources`` (``first, second[, skip]``) are given, ``dscale``. One launch, and for
    ``dscale`` one sum of its per-tile parts; without ``sources`` nothing but ``dout`` is read."""
    if dout.dim() != 4 or source.dim() != 1:
        raise ValueError(f"dout must be [N, C, H, W] and source [G], got {tuple(dout.shape)} and "
                         f"{tuple(source.shape)}")
    n, c, h, w = dout.shape
    g = source.shape[0]
    scale_grad = bool(sources)
    if scale_grad:
        _check(sources[0], sources[1], sources[2] if has_skip else None, source, scale)
    common.check_device(dout, source, scale, *sources)
    dout, source = dout.contiguous(), source.contiguous()
    sources = tuple(t.contiguous() for t in sources)
    grads = [dout.new_empty((n, g * c, h, w)) for _ in range(2 + has_skip)]
    block_r, block_p = _blocks(n * c, h * w)
    grid = (triton.cdiv(h * w, block_p), triton.cdiv(n * c, block_r), g)
    partial = torch.empty((g, grid[0] * grid[1]), device=dout.device, dtype=torch.float32) if scale_grad else None
    first = second = skip = dout  # read only for dscale
    if scale_grad:
        first, second = sources[:2]
        skip = sources[2] if has_skip else dout
    if dout.numel():
        launcher(_slot_sum_bwd_kernel, dout)[grid](
            dout, first, second, skip, source, source if scale is None else scale, grads[0], grads[1], grads[-1],
            dout if partial is None else partial, n, g, c, h * w, HAS_SKIP=has_skip, HAS_SCALE=scale is not None,
            SCALE_GRAD=scale_grad, BLOCK_P=block_p, BLOCK_R=block_r, ROUND_BF16=dout.dtype == torch.bfloat16)
    if scale_grad:
        grads.append(partial.sum(1).to(scale.dtype))
    return grads


def _selected(first: torch.Tensor, second: torch.Tensor, skip: torch.Tensor | None,
              source: torch.Tensor) -> torch.Tensor:
    """``[N, G, C, H, W]``: each slot's chosen source (zero for :data:`NONE`), with no host read."""
    n, g, c, h, w = _check(first, second, skip, source, None)
    code = source.view(1, g, 1, 1, 1)
    y = torch.where(code == SECOND, second.view(n, g, c, h, w), first.view(n, g, c, h, w))
    if skip is not None:
        y = torch.where(code == SKIP, skip.view(n, g, c, h, w), y)
    return y.masked_fill(code == NONE, 0.0)


def slot_sum_reference(first: torch.Tensor, second: torch.Tensor, skip: torch.Tensor | None, source: torch.Tensor,
                       scale: torch.Tensor | None = None, base: torch.Tensor | None = None) -> torch.Tensor:
    """Pure PyTorch, no host read: the selections, then the scaled sum over the slots (plus ``base``)."""
    _check(first, second, skip, source, scale, base)
    y = _selected(first, second, skip, source)
    if scale is not None:
        y = y * scale.view(1, -1, 1, 1, 1)
    return y.sum(dim=1) if base is None else base + y.sum(dim=1)


def _reference_backward(dout: torch.Tensor, source: torch.Tensor, scale: torch.Tensor | None, has_skip: bool,
                        sources: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """:func:`slot_sum_backward` in PyTorch (explicit gradients: a custom op's kernel runs below autograd)."""
    n, c, h, w = dout.shape
    g = source.shape[0]
    code = source.view(1, g, 1, 1, 1)
    grad = dout.unsqueeze(1)
    if scale is not None:
        grad = grad * scale.view(1, g, 1, 1, 1)
    zero = grad.new_zeros(())
    kinds = (FIRST, SECOND, SKIP)[:2 + has_skip]
    grads = [torch.where(code == kind, grad, zero).expand(n, g, c, h, w).reshape(n, g * c, h, w) for kind in kinds]
    if sources:
        skip = sources[2] if has_skip else None
        grads.append((_selected(sources[0], sources[1], skip, source) * dout.unsqueeze(1)).sum((0, 2, 3, 4))
                     .to(scale.dtype))
    return grads


@torch.library.custom_op("sswp_fast::slot_sum", mutates_args=())
def _slot_sum_op(first: torch.Tensor, second: torch.Tensor, skip: torch.Tensor | None, source: torch.Tensor,
                 scale: torch.Tensor | None, base: torch.Tensor | None) -> torch.Tensor:
    if common.runs_on_triton(first):
        return slot_sum_forward(first, second, skip, source, scale, base)
    return slot_sum_reference(first, second, skip, source, scale, base).contiguous()


@torch.library.custom_op("sswp_fast::slot_sum_backward", mutates_args=())
def _slot_sum_backward_op(dout: torch.Tensor, source: torch.Tensor, scale: torch.Tensor | None, has_skip: bool,
                          sources: list[torch.Tensor]) -> list[torch.Tensor]:
    if common.runs_on_triton(dout):
        return slot_sum_backward(dout, source, scale, has_skip, tuple(sources))
    return [t.contiguous() for t in _reference_backward(dout, source, scale, has_skip, tuple(sources))]


@_slot_sum_op.register_fake
def _(first, second, skip, source, scale, base):
    n, gc, h, w = first.shape
    return first.new_empty((n, gc // source.shape[0], h, w), dtype=_out_dtype(first, second, skip, scale, base))


@_slot_sum_backward_op.register_fake
def _(dout, source, scale, has_skip, sources):
    n, c, h, w = dout.shape
    grads = [dout.new_empty((n, source.shape[0] * c, h, w)) for _ in range(2 + has_skip)]
    return grads + [torch.empty_like(scale)] if sources else grads


def _setup_context(ctx, inputs, output) -> None:
    first, second, skip, source, scale, base = inputs
    ctx.has_skip = skip is not None
    ctx.base_grad = base is not None and ctx.needs_input_grad[5]
    ctx.scale_grad = scale is not None and ctx.needs_input_grad[4]
    sources = (first, second, skip)[:2 + ctx.has_skip] if ctx.scale_grad else ()  # only dscale reads them
    ctx.save_for_backward(source, scale, *sources)


def _backward(ctx, dout: torch.Tensor):
    source, scale, *sources = ctx.saved_tensors
    grads = torch.ops.sswp_fast.slot_sum_backward(dout, source, scale, ctx.has_skip, sources)
    dscale = grads.pop() if ctx.scale_grad else None
    dskip = grads.pop() if ctx.has_skip else None
    return grads[0], grads[1], dskip, None, dscale, dout if ctx.base_grad else None


_slot_sum_op.register_autograd(_backward, setup_context=_setup_context)


def slot_sum(first: torch.Tensor, second: torch.Tensor, skip: torch.Tensor | None, source: torch.Tensor,
             scale: torch.Tensor | None = None, base: torch.Tensor | None = None) -> torch.Tensor:
    """Differentiable :func:`slot_sum_forward` as the custom op ``torch.ops.sswp_fast.slot_sum`` (one call for
    ``torch.compile``): the Triton kernels on CUDA (and on CPU under the interpreter), the PyTorch reference on
    other CPU tensors. Autograd saves ``source`` and ``scale``, and the sources only when ``scale`` needs a
    gradient: the other gradients are ``dout`` routed, in ``dout``'s dtype (autograd casts where a source's
    differs). ``base`` is added in the same launch; its gradient is ``dout`` (no launch)."""
    return torch.ops.sswp_fast.slot_sum(first, second, skip, source, scale, base)
