"""Sampled factorized reduce for a group of stride-2 edges: the skip op of a reduction cell, run only by the slots
whose device-side index chose it.

At stride 2 the DARTS skip is a *factorized reduce*: ReLU, then two 1×1 stride-2 convolutions, one on the even
pixels ``(2i, 2j)`` and one on the odd ``(2i+1, 2j+1)``, each giving half of the output channels, concatenated.
Evaluated for every slot and then selected, it costs ten launches a group each way (the ReLU, two strided slices,
two grouped convolutions, a stack, a selection, and their backward passes) and the FLOPs of the slots that did
not sample it. Here one launch runs it for the slots whose flag is set and copies ``base`` (the group's sampled
convolutions and pools, zero where a slot reduces) into the others; the backward pass is one launch too (and one
fill of the weight gradients, none when no weight gradient is asked for, as in an arch step).

Layout, as in :mod:`.sampled_pool`: ``x`` is [N, G*C, H, W] (H and W even) with slot ``g`` in channels
``g*C:(g+1)*C``; ``reduce`` is a [G] integer tensor on the device, nonzero where the slot reduces; the weights
``w_even`` / ``w_odd`` are [G*C/2, C] (slot ``g``'s in rows ``g*C/2:(g+1)*C/2``, its ``conv_1`` and ``conv_2``);
``base`` and the output are [N, G*C, H/2, W/2], a reducing slot's even half in its first C/2 channels.

Each program reduces over the C input channels of one slot with rank-1 updates in fp32 (fp64 tensors too, as in
:mod:`.dwpw`); the weight gradients are summed across programs with ``tl.atomic_add``, as :mod:`.dwpw` sums its
own.

Contents: ``_reduce_fwd_kernel``, ``_reduce_bwd_kernel``, the launchers ``sampled_reduce_forward`` /
``sampled_reduce_backward``, the custom ops ``sswp_fast::sampled_reduce`` (autograd and fake kernels) and
``sswp_fast::sampled_reduce_backward``, the entry point ``sampled_reduce`` and the PyTorch reference
``sampled_reduce_reference`` (the op's kernel for CPU tensors outside the interpreter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import common
from .common import cast_out, jit, launcher

__all__ = ["sampled_reduce", "sampled_reduce_backward", "sampled_reduce_forward", "sampled_reduce_grads",
           "sampled_reduce_reference"]

_BLOCK_ELEMENTS = 4096
"""A program covers one slot of one image: all its channels × up to this many elements in all."""


@jit
def _program(G, C, W, HO, WO, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """A program's slot ``g`` (grid axis 1) of image ``n`` (axis 2) and tile of output pixels (axis 0): ``(g, pixel
    mask, offsets of the even input pixels in a plane, channel offsets, the slot's first plane, output offsets
    [channels, pixels])``."""
    offs = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    g = tl.program_id(1).to(tl.int64)
    n = tl.program_id(2).to(tl.int64)
    even = (2 * (offs // WO)) * W + 2 * (offs % WO)
    ch = tl.arange(0, BLOCK_C)
    slot = (n * G + g) * C
    return g, offs < HO * WO, even, ch, slot, (slot + ch[:, None]) * HO * WO + offs[None, :]


@jit
def _reduce_fwd_kernel(x_ptr, reduce_ptr, we_ptr, wo_ptr, base_ptr, y_ptr, G, C, HALF, H, W, HO, WO,
                       BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ROUND_BF16: tl.constexpr):
    """Grid (output pixel tiles, G, N): slot g of image n, its factorized reduce or its ``base``."""
    g, pixels, even, ch, slot, out = _program(G, C, W, HO, WO, BLOCK_P, BLOCK_C)
    if tl.load(reduce_ptr + g) != 0:
        halves = ch < HALF
        acc_even = tl.zeros((BLOCK_C, BLOCK_P), tl.float32)
        acc_odd = tl.zeros((BLOCK_C, BLOCK_P), tl.float32)
        for k in range(C):
            plane = x_ptr + (slot + k) * H * W
            x_even = tl.maximum(tl.load(plane + even, mask=pixels, other=0.0).to(tl.float32), 0.0)
            x_odd = tl.maximum(tl.load(plane + even + W + 1, mask=pixels, other=0.0).to(tl.float32), 0.0)
            w_even = tl.load(we_ptr + (g * HALF + ch) * C + k, mask=halves, other=0.0).to(tl.float32)
            w_odd = tl.load(wo_ptr + (g * HALF + ch) * C + k, mask=halves, other=0.0).to(tl.float32)
            acc_even += w_even[:, None] * x_even[None, :]
            acc_odd += w_odd[:, None] * x_odd[None, :]
        mask = halves[:, None] & pixels[None, :]
        tl.store(y_ptr + out, cast_out(acc_even, y_ptr, ROUND_BF16), mask=mask)
        tl.store(y_ptr + out + HALF * HO * WO, cast_out(acc_odd, y_ptr, ROUND_BF16), mask=mask)
    else:
        mask = (ch < C)[:, None] & pixels[None, :]
        tl.store(y_ptr + out, tl.load(base_ptr + out, mask=mask, other=0.0), mask=mask)


@jit
def _reduce_bwd_kernel(x_ptr, reduce_ptr, we_ptr, wo_ptr, dy_ptr, dx_ptr, dbase_ptr, dwe_ptr, dwo_ptr, G, C, HALF,
                       H, W, HO, WO, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
                       ROUND_BF16: tl.constexpr, WEIGHT_GRADS: tl.constexpr):
    """Grid (output pixel tiles, G, N): slot g of image n. A reducing slot writes ``dx`` at the four input pixels
    of each output pixel (zero at the two that no convolution reads), adds its share of the weight gradients with
    ``WEIGHT_GRADS``, and writes a zero ``dbase``; any other slot writes a zero ``dx`` and passes ``dy`` to
    ``dbase``."""
    g, pixels, even, ch, slot, out = _program(G, C, W, HO, WO, BLOCK_P, BLOCK_C)
    zero = tl.zeros((BLOCK_P,), tl.float32)
    if tl.load(reduce_ptr + g) != 0:
        halves = ch < HALF
        mask = halves[:, None] & pixels[None, :]
        dy_even = tl.load(dy_ptr + out, mask=mask, other=0.0).to(tl.float32)
        dy_odd = tl.load(dy_ptr + out + HALF * HO * WO, mask=mask, other=0.0).to(tl.float32)
        for k in range(C):
            plane = (slot + k) * H * W
            x_even = tl.load(x_ptr + plane + even, mask=pixels, other=0.0).to(tl.float32)
            x_odd = tl.load(x_ptr + plane + even + W + 1, mask=pixels, other=0.0).to(tl.float32)
            w_even = tl.load(we_ptr + (g * HALF + ch) * C + k, mask=halves, other=0.0).to(tl.float32)
            w_odd = tl.load(wo_ptr + (g * HALF + ch) * C + k, mask=halves, other=0.0).to(tl.float32)
            dx_even = tl.where(x_even > 0, tl.sum(w_even[:, None] * dy_even, axis=0), 0.0)
            dx_odd = tl.where(x_odd > 0, tl.sum(w_odd[:, None] * dy_odd, axis=0), 0.0)
            tl.store(dx_ptr + plane + even, cast_out(dx_even, dx_ptr, ROUND_BF16), mask=pixels)
            tl.store(dx_ptr + plane + even + 1, cast_out(zero, dx_ptr, ROUND_BF16), mask=pixels)
            tl.store(dx_ptr + plane + even + W, cast_out(zero, dx_ptr, ROUND_BF16), mask=pixels)
            tl.store(dx_ptr + plane + even + W + 1, cast_out(dx_odd, dx_ptr, ROUND_BF16), mask=pixels)
            if WEIGHT_GRADS:
                rows = (g * HALF + ch) * C + k
                tl.atomic_add(dwe_ptr + rows, tl.sum(dy_even * tl.maximum(x_even, 0.0)[None, :], axis=1),
                              mask=halves)
                tl.atomic_add(dwo_ptr + rows, tl.sum(dy_odd * tl.maximum(x_odd, 0.0)[None, :], axis=1),
                              mask=halves)
        mask = (ch < C)[:, None] & pixels[None, :]
        tl.store(dbase_ptr + out, tl.zeros((BLOCK_C, BLOCK_P), tl.float32).to(dbase_ptr.dtype.element_ty), mask=mask)
    else:
        mask = (ch < C)[:, None] & pixels[None, :]
        tl.store(dbase_ptr + out, tl.load(dy_ptr + out, mask=mask, other=0.0), mask=mask)
        planes = (slot + ch[:, None]) * H * W + even[None, :]
        nothing = tl.zeros((BLOCK_C, BLOCK_P), tl.float32).to(dx_ptr.dtype.element_ty)
        for at in tl.static_range(4):
            tl.store(dx_ptr + planes + (at // 2) * W + at % 2, nothing, mask=mask)


def _check(x: torch.Tensor, reduce: torch.Tensor, w_even: torch.Tensor, w_odd: torch.Tensor,
           base: torch.Tensor) -> tuple[int, int]:
    """``(G, C)`` after checking the shapes."""
    if x.dim() != 4 or reduce.dim() != 1 or x.shape[1] % reduce.shape[0]:
        raise ValueError(f"x must be [N, G*C, H, W] and reduce [G], got {tuple(x.shape)} and {tuple(reduce.shape)}")
    n, gc, h, w = x.shape
    g = reduce.shape[0]
    c = gc // g
    if c % 2 or h % 2 or w % 2:
        raise ValueError(f"a factorized reduce needs an even channel count and even H and W, got C={c}, {h}x{w}")
    for name, weight in (("w_even", w_even), ("w_odd", w_odd)):
        if weight.numel() != g * c // 2 * c:
            raise ValueError(f"{name} must hold [G*C/2, C] = [{g * c // 2}, {c}], got shape {tuple(weight.shape)}")
    if tuple(base.shape) != (n, gc, h // 2, w // 2) or base.dtype != x.dtype:
        raise ValueError(f"base must be {(n, gc, h // 2, w // 2)} in {x.dtype}, got {tuple(base.shape)} in "
                         f"{base.dtype}")
    return g, c


def _launch(kernel, x: torch.Tensor, g: int, c: int, tensors: tuple[torch.Tensor, ...], **flags: bool) -> None:
    n, _, h, w = x.shape
    rows = triton.next_power_of_2(c)
    pixels = h // 2 * (w // 2)
    block_p = max(16, min(triton.next_power_of_2(pixels), _BLOCK_ELEMENTS // rows))
    launcher(kernel, x)[(triton.cdiv(pixels, block_p), g, n)](
        *tensors, g, c, c // 2, h, w, h // 2, w // 2, BLOCK_P=block_p, BLOCK_C=rows,
        ROUND_BF16=x.dtype == torch.bfloat16, **flags)


def sampled_reduce_forward(x: torch.Tensor, reduce: torch.Tensor, w_even: torch.Tensor, w_odd: torch.Tensor,
                           base: torch.Tensor) -> torch.Tensor:
    """The factorized reduce of every slot whose ``reduce`` flag is set, ``base`` in the others: one launch."""
    g, c = _check(x, reduce, w_even, w_odd, base)
    common.check_device(x, reduce, w_even, w_odd, base)
    x, base = x.contiguous(), base.contiguous()
    y = torch.empty_like(base)
    if y.numel():
        _launch(_reduce_fwd_kernel, x, g, c, (x, reduce, w_even.contiguous(), w_odd.contiguous(), base, y))
    return y


def sampled_reduce_backward(dy: torch.Tensor, x: torch.Tensor, reduce: torch.Tensor, w_even: torch.Tensor,
                            w_odd: torch.Tensor, weight_grads: bool = True, grad_out: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dbase, weight gradients)`` of :func:`sampled_reduce_forward`: one launch, and one fill of the weight
    gradients ``[2, G*C/2, C]`` (even, odd; fp32), which are zero in the rows of the slots that did not reduce, and
    empty (no fill) without ``weight_grads``. Given ``grad_out`` (fp32, that size, zero) they are added into it
    (no fill), and it is the result."""
    g, c = _check(x, reduce, w_even, w_odd, dy)
    common.check_device(dy, x, reduce, w_even, w_odd)
    x, dy = x.contiguous(), dy.contiguous()
    dx, dbase = torch.empty_like(x), torch.empty_like(dy)
    if weight_grads:
        grads = common.weight_gradient_buffer(grad_out, g * c * c, x.device).view(2, g * c // 2, c)
    else:
        grads = torch.empty(0, device=x.device, dtype=torch.float32)
    if dy.numel():
        dwe, dwo = (grads[0], grads[1]) if weight_grads else (w_even, w_odd)  # placeholders, never written
        _launch(_reduce_bwd_kernel, x, g, c, (x, reduce, w_even.contiguous(), w_odd.contiguous(), dy, dx, dbase,
                                              dwe, dwo), WEIGHT_GRADS=weight_grads)
    return dx, dbase, grads


def _slots(t: torch.Tensor, g: int) -> torch.Tensor:
    return t.view(t.shape[0], g, -1, *t.shape[2:])


def _halves(x: torch.Tensor, w_even: torch.Tensor, w_odd: torch.Tensor, g: int):
    """The ReLU'd even and odd pixels and the weights as grouped 1×1 convolution weights, in ``x``'s dtype."""
    c = x.shape[1] // g
    relu = torch.relu(x)
    weights = tuple(w.reshape(g * c // 2, c, 1, 1).to(x.dtype) for w in (w_even, w_odd))
    return relu[:, :, ::2, ::2], relu[:, :, 1::2, 1::2], weights


def sampled_reduce_reference(x: torch.Tensor, reduce: torch.Tensor, w_even: torch.Tensor, w_odd: torch.Tensor,
                             base: torch.Tensor) -> torch.Tensor:
    """Pure PyTorch, no host read: every slot's factorized reduce, kept where its flag is set, ``base`` elsewhere."""
    g, _ = _check(x, reduce, w_even, w_odd, base)
    with torch.autocast(x.device.type, enabled=False):  # in x's dtype, as the kernel computes, whatever --amp says
        x_even, x_odd, (we, wo) = _halves(x, w_even, w_odd, g)
        halves = [_slots(F.conv2d(part, weight, groups=g), g) for part, weight in ((x_even, we), (x_odd, wo))]
        reduced = torch.cat(halves, dim=2)
    return torch.where(reduce.view(1, g, 1, 1, 1) != 0, reduced, _slots(base, g)).view_as(base)


def _reference_backward(dy: torch.Tensor, x: torch.Tensor, reduce: torch.Tensor, w_even: torch.Tensor,
                        w_odd: torch.Tensor, weight_grads: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`sampled_reduce_backward` in PyTorch (explicit convolution gradients: a custom op's kernel runs below
    autograd)."""
    g, c = _check(x, reduce, w_even, w_odd, dy)
    flags = reduce.view(1, g, 1, 1, 1) != 0
    slots = _slots(dy, g)
    dbase = torch.where(flags, 0, slots).view_as(dy)
    reduced = torch.where(flags, slots, 0)
    dx = torch.zeros_like(x)
    grads = []
    with torch.autocast(x.device.type, enabled=False):
        x_even, x_odd, weights = _halves(x, w_even, w_odd, g)
        for half, (part, weight, at) in enumerate(((x_even, weights[0], (0, 0)), (x_odd, weights[1], (1, 1)))):
            grad = reduced[:, :, half * c // 2:(half + 1) * c // 2].reshape(part.shape[0], -1, *part.shape[2:])
            d_part, d_weight, _ = torch.ops.aten.convolution_backward(
                grad, part, weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], g, [True, weight_grads, False])
            dx[:, :, at[0]::2, at[1]::2] = d_part * (part > 0)
            grads.append(d_weight)
    if not weight_grads:
        return dx, dbase, w_even.new_empty(0)
    return dx, dbase, torch.stack([grad.reshape(g * c // 2, c).to(w_even.dtype) for grad in grads])


@torch.library.custom_op("sswp_fast::sampled_reduce", mutates_args=())
def _sampled_reduce_op(x: torch.Tensor, reduce: torch.Tensor, w_even: torch.Tensor, w_odd: torch.Tensor,
                       base: torch.Tensor, grad_out: torch.Tensor | None) -> torch.Tensor:
    """``grad_out`` is not read here: the backward pass adds the weight gradients into it."""
    if common.runs_on_triton(x):
        return sampled_reduce_forward(x, reduce, w_even, w_odd, base)
    return sampled_reduce_reference(x, reduce, w_even, w_odd, base).contiguous()


@torch.library.custom_op("sswp_fast::sampled_reduce_backward", mutates_args=("grad_out",))
def _sampled_reduce_backward_op(dy: torch.Tensor, x: torch.Tensor, reduce: torch.Tensor, w_even: torch.Tensor,
                                w_odd: torch.Tensor, weight_grads: bool, grad_out: torch.Tensor | None
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dx``, ``dbase`` and the weight gradients ``[2, G*C/2, C]`` (even, odd) in the weights' dtype; with
    ``grad_out`` those are added into it instead, and the third result is empty."""
    if common.runs_on_triton(x):
        dx, dbase, grads = sampled_reduce_backward(dy, x, reduce, w_even, w_odd, weight_grads, grad_out)
        return dx, dbase, grads.to(w_even.dtype) if grad_out is None else w_even.new_empty(0)
    dx, dbase, grads = _reference_backward(dy, x, reduce, w_even, w_odd, weight_grads)
    if grad_out is None or not weight_grads:
        return dx.contiguous(), dbase.contiguous(), grads
    grad_out.add_(grads.reshape(-1).to(grad_out.dtype))
    return dx.contiguous(), dbase.contiguous(), w_even.new_empty(0)


@_sampled_reduce_op.register_fake
def _(x, reduce, w_even, w_odd, base, grad_out):
    return torch.empty_like(base)


@_sampled_reduce_backward_op.register_fake
def _(dy, x, reduce, w_even, w_odd, weight_grads, grad_out):
    g = reduce.shape[0]
    c = x.shape[1] // g
    shape = (2, g * c // 2, c) if weight_grads and grad_out is None else (0,)
    return torch.empty_like(x), torch.empty_like(dy), w_even.new_empty(shape)


def _setup_context(ctx, inputs, output) -> None:
    x, reduce, w_even, w_odd, _, grad_out = inputs
    ctx.save_for_backward(x, reduce, w_even, w_odd)
    ctx.grad_out = grad_out


def _backward(ctx, dy: torch.Tensor):
    x, reduce, w_even, w_odd = ctx.saved_tensors
    weight_grads = ctx.needs_input_grad[2] or ctx.needs_input_grad[3]  # none in an arch step (detached banks)
    grad_out, ctx.grad_out = ctx.grad_out, None  # zero only once: a second backward pass gets fresh gradients
    dx, dbase, grads = sampled_reduce_grads(dy, x, reduce, w_even, w_odd, weight_grads, grad_out)
    return dx, None, *(grads or (None, None)), dbase, None


def sampled_reduce_grads(dy: torch.Tensor, x: torch.Tensor, reduce: torch.Tensor, w_even: torch.Tensor,
                         w_odd: torch.Tensor, weight_grads: bool = True, grad_out: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]:
    """:func:`sampled_reduce`'s backward pass through the op ``torch.ops.sswp_fast.sampled_reduce_backward``, for
    code that differentiates by hand (:mod:`sswp_fast.search.executors.device`): ``dx``, ``dbase`` and the two weights'
    gradients in their dtype and shape (None without ``weight_grads``; with ``grad_out``, added into it)."""
    dx, dbase, grads = torch.ops.sswp_fast.sampled_reduce_backward(dy, x, reduce, w_even, w_odd, weight_grads,
                                                                   grad_out if weight_grads else None)
    if not weight_grads:
        return dx, dbase, None
    if grad_out is not None:
        grads = grad_out.view(2, -1).to(w_even.dtype)
    return dx, dbase, [grads[0].view_as(w_even), grads[1].view_as(w_odd)]


_sampled_reduce_op.register_autograd(_backward, setup_context=_setup_context)


def sampled_reduce(x: torch.Tensor, reduce: torch.Tensor, w_even: torch.Tensor, w_odd: torch.Tensor,
                   base: torch.Tensor, grad_out: torch.Tensor | None = None) -> torch.Tensor:
    """Differentiable :func:`sampled_reduce_forward` as the custom op ``torch.ops.sswp_fast.sampled_reduce`` (one
    call for ``torch.compile``): the Triton kernels on CUDA (and on CPU under the interpreter), the PyTorch
    reference on other CPU tensors. Autograd saves ``x``, ``reduce`` and the weights only. ``grad_out``: a zero
    fp32 tensor of both weights' size into which the (first) backward pass adds their gradients, as
    :func:`.sampled_dwpw.sampled_dwpw` does."""
    return torch.ops.sswp_fast.sampled_reduce(x, reduce, w_even, w_odd, base, grad_out)
