"""Sampled ReLU → depthwise → pointwise for a group of edges, the variant of each chosen on the device.

The edges of one node of a search cell each run one sampled op; for the separable and dilated convolutions
the expensive part is a fused ReLU + depthwise k×k + pointwise 1×1 half (:mod:`.dwpw`), and which k, padding,
dilation and weights it uses depends on the sampled op. Here one launch evaluates that half for every edge
of the group, each with the *variant* its device-side index selects, so no host synchronisation decides what
runs and the sequence of launches is the same whatever was sampled (what CUDA-graph capture needs). Given
``pool``, a slot with no variant runs its 3×3 pool instead (:mod:`.sampled_pool`), in the same launches forward
and backward: a group's whole first stage but the stride-2 skip is one launch each way.

Layout: the ``G`` edges (slots) of a group are stacked along channels, ``x`` is [N, G*C, H, W] with slot ``g``
in channels ``g*C:(g+1)*C`` (so per-slot BatchNorm is one BatchNorm over G*C channels), and so is the output
[N, G*C, Ho, Wo]. ``variant`` is a [G] integer tensor on the device: ``variant[g] = v`` runs variant ``v`` of
``variants`` on slot ``g``; a negative value leaves the slot's output zero (and its input gradient zero).
A :class:`Variant` fixes the depthwise kernel size, padding and dilation; its weights are banks
``w_dw`` [G, C, 1, k, k] and ``w_pw`` [G, C, C, 1, 1] (slot ``g``'s weights for that variant at index ``g``,
e.g. ``torch.stack`` of the edges' module parameters, through which autograd returns the gradients). Every
variant must give the same output size (the DARTS ops all keep the size at stride 1 and halve it at stride 2).

Contents: ``_sampled_fwd_kernel``, ``_sampled_bwd_act_kernel``, ``_sampled_bwd_dx_kernel`` (the tile functions
of :mod:`.dwpw` behind a runtime branch on the slot's variant; up to four variants), the launchers
``sampled_dwpw_forward`` / ``sampled_dwpw_backward``, the custom ops ``sswp_fast::sampled_dwpw`` (with autograd
and fake kernels, so ``torch.compile`` traces it) and ``sswp_fast::sampled_dwpw_backward``, the entry point
``sampled_dwpw`` and the pure-PyTorch reference ``sampled_dwpw_reference`` (which reads the indices on the host,
and is the op's kernel for CPU tensors outside the interpreter).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import common, dwpw
from .common import jit, launcher
from .dwpw import bwd_act_tile, bwd_dx_tile, copy_tile, dwpw_reference, fwd_tile, zero_tile
from .sampled_pool import pool_bwd_tile, pool_fwd_tile, pool_output_size, pool_reference, pool_reference_backward

__all__ = ["Variant", "sampled_dwpw", "sampled_dwpw_backward", "sampled_dwpw_forward", "sampled_dwpw_grads",
           "sampled_dwpw_reference"]

MAX_VARIANTS = 4


class Variant(NamedTuple):
    """Depthwise kernel size, padding and dilation of one selectable half."""

    kernel: int
    padding: int
    dilation: int


# ----------------------------------------------------------------------------------------------------------
# Triton kernels: one branch per variant, each calling the dwpw tile function with that variant's constants
# ----------------------------------------------------------------------------------------------------------


@jit
def _sampled_fwd_kernel(
    x_ptr, var_ptr, pool_ptr, wdw0, wpw0, wdw1, wpw1, wdw2, wpw2, wdw3, wpw3, y_ptr,
    G, C, H, W, HO, WO,
    STRIDE: tl.constexpr,
    K0: tl.constexpr, P0: tl.constexpr, D0: tl.constexpr, K1: tl.constexpr, P1: tl.constexpr, D1: tl.constexpr,
    K2: tl.constexpr, P2: tl.constexpr, D2: tl.constexpr, K3: tl.constexpr, P3: tl.constexpr, D3: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_CO: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ROUND_BF16: tl.constexpr, HAS_POOL: tl.constexpr,
):
    """Grid (pixel tiles of Ho×Wo, N, G): slot g of image n through its variant, or where that is negative (and
    with ``HAS_POOL``) through its pool, else nothing."""
    pid_p = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    g = tl.program_id(2).to(tl.int64)
    v = tl.load(var_ptr + g)
    x_img = x_ptr + (n * G + g) * C * H * W
    y_img = y_ptr + (n * G + g) * C * HO * WO
    if v == 0:
        fwd_tile(x_img, wdw0 + g * C * K0 * K0, wpw0 + g * C * C, y_img, pid_p, C, C, H, W, HO, WO, STRIDE, P0, D0,
                 K0, BLOCK_P, BLOCK_W, BLOCK_C, BLOCK_CO, DOT_PRECISION, ROUND_BF16)
    elif v == 1:
        fwd_tile(x_img, wdw1 + g * C * K1 * K1, wpw1 + g * C * C, y_img, pid_p, C, C, H, W, HO, WO, STRIDE, P1, D1,
                 K1, BLOCK_P, BLOCK_W, BLOCK_C, BLOCK_CO, DOT_PRECISION, ROUND_BF16)
    elif v == 2:
        fwd_tile(x_img, wdw2 + g * C * K2 * K2, wpw2 + g * C * C, y_img, pid_p, C, C, H, W, HO, WO, STRIDE, P2, D2,
                 K2, BLOCK_P, BLOCK_W, BLOCK_C, BLOCK_CO, DOT_PRECISION, ROUND_BF16)
    elif v == 3:
        fwd_tile(x_img, wdw3 + g * C * K3 * K3, wpw3 + g * C * C, y_img, pid_p, C, C, H, W, HO, WO, STRIDE, P3, D3,
                 K3, BLOCK_P, BLOCK_W, BLOCK_C, BLOCK_CO, DOT_PRECISION, ROUND_BF16)
    else:
        kind = tl.load(pool_ptr + g) if HAS_POOL else -1
        if kind == 0:
            pool_fwd_tile(x_img, y_img, pid_p, C, H, W, HO, WO, STRIDE, True, BLOCK_P, BLOCK_W, BLOCK_CO, ROUND_BF16)
        elif kind == 1:
            pool_fwd_tile(x_img, y_img, pid_p, C, H, W, HO, WO, STRIDE, False, BLOCK_P, BLOCK_W, BLOCK_CO, ROUND_BF16)
        else:
            zero_tile(y_img, pid_p, 0, C, HO, WO, BLOCK_P, BLOCK_W, BLOCK_CO)


@jit
def _sampled_bwd_act_kernel(
    x_ptr, var_ptr, wdw0, wpw0, wdw1, wpw1, wdw2, wpw2, wdw3, wpw3, dy_ptr, g_ptr,
    gwdw0, gwpw0, gwdw1, gwpw1, gwdw2, gwpw2, gwdw3, gwpw3,
    G, C, H, W, HO, WO,
    STRIDE: tl.constexpr,
    K0: tl.constexpr, P0: tl.constexpr, D0: tl.constexpr, K1: tl.constexpr, P1: tl.constexpr, D1: tl.constexpr,
    K2: tl.constexpr, P2: tl.constexpr, D2: tl.constexpr, K3: tl.constexpr, P3: tl.constexpr, D3: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_CO: tl.constexpr,
    DOT_PRECISION: tl.constexpr, WEIGHT_GRADS: tl.constexpr,
):
    """Grid (pixel tiles of Ho×Wo, N, G): backward part 1 of slot g of image n (see ``dwpw.bwd_act_tile``);
    with ``WEIGHT_GRADS`` the weight gradients go to the slot's row of its variant's fp32 gradient banks."""
    pid_p = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    g = tl.program_id(2).to(tl.int64)
    v = tl.load(var_ptr + g)
    img = (n * G + g) * C
    x_img = x_ptr + img * H * W
    dy_img = dy_ptr + img * HO * WO
    g_img = g_ptr + img * HO * WO
    if v == 0:
        bwd_act_tile(x_img, wdw0 + g * C * K0 * K0, wpw0 + g * C * C, dy_img, g_img, gwdw0 + g * C * K0 * K0,
                     gwpw0 + g * C * C, pid_p, C, C, H, W, HO, WO, STRIDE, P0, D0, K0,
                     BLOCK_P, BLOCK_W, BLOCK_C, BLOCK_CO, DOT_PRECISION, WEIGHT_GRADS)
    elif v == 1:
        bwd_act_tile(x_img, wdw1 + g * C * K1 * K1, wpw1 + g * C * C, dy_img, g_img, gwdw1 + g * C * K1 * K1,
                     gwpw1 + g * C * C, pid_p, C, C, H, W, HO, WO, STRIDE, P1, D1, K1,
                     BLOCK_P, BLOCK_W, BLOCK_C, BLOCK_CO, DOT_PRECISION, WEIGHT_GRADS)
    elif v == 2:
        bwd_act_tile(x_img, wdw2 + g * C * K2 * K2, wpw2 + g * C * C, dy_img, g_img, gwdw2 + g * C * K2 * K2,
                     gwpw2 + g * C * C, pid_p, C, C, H, W, HO, WO, STRIDE, P2, D2, K2,
                     BLOCK_P, BLOCK_W, BLOCK_C, BLOCK_CO, DOT_PRECISION, WEIGHT_GRADS)
    elif v == 3:
        bwd_act_tile(x_img, wdw3 + g * C * K3 * K3, wpw3 + g * C * C, dy_img, g_img, gwdw3 + g * C * K3 * K3,
                     gwpw3 + g * C * C, pid_p, C, C, H, W, HO, WO, STRIDE, P3, D3, K3,
                     BLOCK_P, BLOCK_W, BLOCK_C, BLOCK_CO, DOT_PRECISION, WEIGHT_GRADS)


@jit
def _sampled_bwd_dx_kernel(
    x_ptr, var_ptr, pool_ptr, wdw0, wdw1, wdw2, wdw3, g_ptr, dy_ptr, idle_ptr, dx_ptr,
    G, C, H, W, HO, WO,
    STRIDE: tl.constexpr,
    K0: tl.constexpr, P0: tl.constexpr, D0: tl.constexpr, K1: tl.constexpr, P1: tl.constexpr, D1: tl.constexpr,
    K2: tl.constexpr, P2: tl.constexpr, D2: tl.constexpr, K3: tl.constexpr, P3: tl.constexpr, D3: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, ROUND_BF16: tl.constexpr,
    HAS_POOL: tl.constexpr, HAS_IDLE: tl.constexpr,
):
    """Grid (pixel tiles of H×W, cdiv(C, BLOCK_C), N*G): backward part 2 (``dwpw.bwd_dx_tile``) of one slot, or
    its pool's backward (from ``dy``), or for a slot that runs nothing its part of ``idle`` (``HAS_IDLE``) or
    zeros."""
    pid_q = tl.program_id(0)
    pid_c = tl.program_id(1)
    ng = tl.program_id(2).to(tl.int64)
    g = ng % G
    v = tl.load(var_ptr + g)
    x_img = x_ptr + ng * C * H * W
    g_img = g_ptr + ng * C * HO * WO
    dx_img = dx_ptr + ng * C * H * W
    dy_img = dy_ptr + ng * C * HO * WO
    if v == 0:
        bwd_dx_tile(x_img, wdw0 + g * C * K0 * K0, g_img, dx_img, pid_q, pid_c, C, H, W, HO, WO, STRIDE, P0, D0, K0,
                    BLOCK_Q, BLOCK_W, BLOCK_C, ROUND_BF16)
    elif v == 1:
        bwd_dx_tile(x_img, wdw1 + g * C * K1 * K1, g_img, dx_img, pid_q, pid_c, C, H, W, HO, WO, STRIDE, P1, D1, K1,
                    BLOCK_Q, BLOCK_W, BLOCK_C, ROUND_BF16)
    elif v == 2:
        bwd_dx_tile(x_img, wdw2 + g * C * K2 * K2, g_img, dx_img, pid_q, pid_c, C, H, W, HO, WO, STRIDE, P2, D2, K2,
                    BLOCK_Q, BLOCK_W, BLOCK_C, ROUND_BF16)
    elif v == 3:
        bwd_dx_tile(x_img, wdw3 + g * C * K3 * K3, g_img, dx_img, pid_q, pid_c, C, H, W, HO, WO, STRIDE, P3, D3, K3,
                    BLOCK_Q, BLOCK_W, BLOCK_C, ROUND_BF16)
    else:
        kind = tl.load(pool_ptr + g) if HAS_POOL else -1
        if kind == 0:
            pool_bwd_tile(x_img, dy_img, dx_img, pid_q, pid_c, C, H, W, HO, WO, STRIDE, True, BLOCK_Q, BLOCK_W,
                          BLOCK_C, ROUND_BF16)
        elif kind == 1:
            pool_bwd_tile(x_img, dy_img, dx_img, pid_q, pid_c, C, H, W, HO, WO, STRIDE, False, BLOCK_Q, BLOCK_W,
                          BLOCK_C, ROUND_BF16)
        elif HAS_IDLE:
            copy_tile(idle_ptr + ng * C * H * W, dx_img, pid_q, pid_c, C, H, W, BLOCK_Q, BLOCK_W, BLOCK_C,
                      ROUND_BF16)
        else:
            zero_tile(dx_img, pid_q, pid_c, C, H, W, BLOCK_Q, BLOCK_W, BLOCK_C)


# ----------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------


def _output_size(size: int, variant: Variant, stride: int) -> int:
    return (size + 2 * variant.padding - variant.dilation * (variant.kernel - 1) - 1) // stride + 1


def _check(x: torch.Tensor, variant: torch.Tensor, stride: int, variants: tuple[Variant, ...],
           banks: tuple[torch.Tensor, ...], device: bool = True,
           pool: torch.Tensor | None = None) -> tuple[int, int, int, int]:
    """Validate the arguments (``device``: also that Triton can run on ``x``'s device); return (G, C, Ho, Wo)."""
    if device:
        common.check_device(x)
    if not 1 <= len(variants) <= MAX_VARIANTS:
        raise ValueError(f"need 1 to {MAX_VARIANTS} variants, got {len(variants)}")
    if len(banks) != 2 * len(variants):
        raise ValueError(f"need a (w_dw, w_pw) bank pair per variant: {len(variants)} variants, {len(banks)} banks")
    if variant.dim() != 1 or variant.dtype not in (torch.int32, torch.int64) or variant.device != x.device:
        raise ValueError(f"variant must be a 1-D int32/int64 tensor on {x.device}, got {variant.dtype} "
                         f"{tuple(variant.shape)} on {variant.device}")
    if x.dim() != 4:
        raise ValueError(f"x must be [N, G*C, H, W], got shape {tuple(x.shape)}")
    g = variant.shape[0]
    n, gc, h, w = x.shape
    if g == 0 or gc % g:
        raise ValueError(f"x has {gc} channels, not a multiple of the {g} slots of variant")
    c = gc // g
    sizes = {(_output_size(h, v, stride), _output_size(w, v, stride)) for v in variants}
    if len(sizes) != 1:
        raise ValueError(f"the variants give different output sizes {sorted(sizes)}; they must agree")
    ho, wo = sizes.pop()
    if ho < 1 or wo < 1:
        raise ValueError(f"empty output: input {h}x{w} at stride {stride}")
    if pool is not None:
        if pool.shape != variant.shape or pool.dtype not in (torch.int32, torch.int64) or pool.device != x.device:
            raise ValueError(f"pool must be a [{g}] int32/int64 tensor on {x.device}, got {pool.dtype} "
                             f"{tuple(pool.shape)} on {pool.device}")
        if (pool_output_size(h, stride), pool_output_size(w, stride)) != (ho, wo):
            raise ValueError(f"the pools give {pool_output_size(h, stride)}x{pool_output_size(w, stride)}, the "
                             f"variants {ho}x{wo}; they must agree")
    for v, w_dw, w_pw in zip(variants, banks[0::2], banks[1::2], strict=True):
        if tuple(w_dw.shape) != (g, c, 1, v.kernel, v.kernel):
            raise ValueError(f"w_dw bank must be {(g, c, 1, v.kernel, v.kernel)}, got {tuple(w_dw.shape)}")
        if tuple(w_pw.shape) != (g, c, c, 1, 1):
            raise ValueError(f"w_pw bank must be {(g, c, c, 1, 1)}, got {tuple(w_pw.shape)}")
    return g, c, ho, wo


def _constants(variants: tuple[Variant, ...]) -> dict[str, int]:
    """K0/P0/D0 ... K3/P3/D3; unused variant slots repeat the first (never taken: their index never occurs)."""
    padded = list(variants) + [variants[0]] * (MAX_VARIANTS - len(variants))
    out: dict[str, int] = {}
    for i, v in enumerate(padded):
        out[f"K{i}"], out[f"P{i}"], out[f"D{i}"] = v.kernel, v.padding, v.dilation
    return out


def _padded(tensors: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    return tensors + [tensors[0]] * (count - len(tensors))


def sampled_dwpw_forward(x: torch.Tensor, variant: torch.Tensor, stride: int, variants: tuple[Variant, ...],
                         *banks: torch.Tensor, pool: torch.Tensor | None = None) -> torch.Tensor:
    """``y[:, slot g] = conv1x1(conv_dw(relu(x[:, slot g])))`` with variant ``variant[g]``'s constants and
    weights; where ``variant[g] < 0``, slot g's pool ``pool[g]`` (:mod:`.sampled_pool`), or zero where that is
    negative too or ``pool`` is not given. All slots in one launch; ``banks`` = w_dw, w_pw per variant."""
    g, c, ho, wo = _check(x, variant, stride, variants, banks, pool=pool)
    x = x.contiguous()
    banks = tuple(b.contiguous() for b in banks)
    n, _, h, w = x.shape
    y = torch.empty((n, g * c, ho, wo), device=x.device, dtype=x.dtype)  # idle slots: zeros, by the kernel
    if n == 0:
        return y
    b = dwpw.block_sizes(ho, wo, h, w, c, c, stride, common.interpreted(x))
    launcher(_sampled_fwd_kernel, x)[(dwpw.grid_tiles(ho, wo, b.p, b.pw), n, g)](
        x, variant, variant if pool is None else pool, *_padded(list(banks), 2 * MAX_VARIANTS), y, g, c, h, w, ho,
        wo, STRIDE=stride, **_constants(variants),
        BLOCK_P=b.p, BLOCK_W=b.pw, BLOCK_C=b.c, BLOCK_CO=b.co, DOT_PRECISION=dwpw.dot_precision(x.dtype),
        ROUND_BF16=x.dtype == torch.bfloat16, HAS_POOL=pool is not None, num_warps=b.num_warps,
    )
    return y


def sampled_dwpw_backward(dy: torch.Tensor, x: torch.Tensor, variant: torch.Tensor, stride: int,
                          variants: tuple[Variant, ...], *banks: torch.Tensor, weight_grads: bool = True,
                          grad_out: torch.Tensor | None = None, pool: torch.Tensor | None = None,
                          idle_dx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dx, bank gradients)`` of :func:`sampled_dwpw_forward`, recomputing the activations from ``x``; the bank
    gradients flat, one fp32 tensor of every bank's in order (:func:`split_grads` views them per bank), or empty
    without ``weight_grads`` (an arch step, which differentiates the gates only). Given ``grad_out`` (fp32, that
    size, zero), the weight gradients are added into it instead, and the flat result is that tensor.

    Two launches (the weight gradients reduced with fp32 atomics, as in :func:`.dwpw.dwpw_backward`) and one fill
    (of the flat gradient; none without ``weight_grads`` or with ``grad_out``). A bank's gradient is zero in the
    rows of the slots that did not run its variant; ``dx`` is a pooling slot's pool gradient, and for slots that
    ran nothing zero or, given ``idle_dx`` (``x``'s shape), that slot's part of it (written so by the kernel): the
    gradient such a slot's input gets elsewhere (a skip, a factorized reduce, the stage's own output), with no
    addition launched after."""
    g, c, ho, wo = _check(x, variant, stride, variants, banks, pool=pool)
    x = x.contiguous()
    banks = tuple(b.contiguous() for b in banks)
    n, _, h, w = x.shape
    if dy.shape != (n, g * c, ho, wo):
        raise ValueError(f"dy must be {(n, g * c, ho, wo)}, got shape {tuple(dy.shape)}")
    dy = dy.contiguous()
    if idle_dx is not None and idle_dx.shape != x.shape:
        raise ValueError(f"idle_dx must have x's shape {tuple(x.shape)}, got {tuple(idle_dx.shape)}")
    common.check_device(idle_dx)
    idle_dx = None if idle_dx is None else idle_dx.contiguous()
    dx = torch.empty_like(x)
    if weight_grads:
        flat = common.weight_gradient_buffer(grad_out, sum(bank.numel() for bank in banks), x.device)
        grads = split_grads(flat, banks)
    else:  # an empty result and no fill; the kernel's gradient pointers are placeholders, never written
        flat = torch.empty(0, device=x.device, dtype=torch.float32)
        grads = list(banks)
    if n > 0:
        b = dwpw.block_sizes(ho, wo, h, w, c, c, stride, common.interpreted(x))
        constants = _constants(variants)
        tmp = torch.empty((n, g * c, ho, wo), device=x.device, dtype=torch.float32)
        launcher(_sampled_bwd_act_kernel, x)[(dwpw.grid_tiles(ho, wo, b.p, b.pw), n, g)](
            x, variant, *_padded(list(banks), 2 * MAX_VARIANTS), dy, tmp, *_padded(grads, 2 * MAX_VARIANTS),
            g, c, h, w, ho, wo, STRIDE=stride, **constants,
            BLOCK_P=b.p, BLOCK_W=b.pw, BLOCK_C=b.c, BLOCK_CO=b.co, DOT_PRECISION=dwpw.dot_precision(x.dtype),
            WEIGHT_GRADS=weight_grads, num_warps=b.num_warps,
        )
        launcher(_sampled_bwd_dx_kernel, x)[(dwpw.grid_tiles(h, w, b.q, b.qw), triton.cdiv(c, b.c), n * g)](
            x, variant, variant if pool is None else pool, *_padded(list(banks[0::2]), MAX_VARIANTS), tmp, dy,
            dx if idle_dx is None else idle_dx, dx, g, c, h, w, ho, wo, STRIDE=stride, **constants, BLOCK_Q=b.q,
            BLOCK_W=b.qw, BLOCK_C=b.c, ROUND_BF16=x.dtype == torch.bfloat16, HAS_POOL=pool is not None,
            HAS_IDLE=idle_dx is not None, num_warps=b.num_warps,
        )
    return dx, flat


def split_grads(flat: torch.Tensor, banks: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-bank views of a flat gradient (banks in order), each of its bank's shape."""
    return [part.view(bank.shape) for part, bank in zip(flat.split([b.numel() for b in banks]), banks, strict=True)]


# ----------------------------------------------------------------------------------------------------------
# Autograd and reference
# ----------------------------------------------------------------------------------------------------------


def _flat(variants: tuple[Variant, ...]) -> list[int]:
    return [value for v in variants for value in v]


def _unflat(flat: list[int]) -> tuple[Variant, ...]:
    return tuple(Variant(*flat[i:i + 3]) for i in range(0, len(flat), 3))


@torch.library.custom_op("sswp_fast::sampled_dwpw", mutates_args=())
def _sampled_dwpw_op(x: torch.Tensor, variant: torch.Tensor, stride: int, variants: list[int],
                     banks: list[torch.Tensor], grad_out: torch.Tensor | None,
                     pool: torch.Tensor | None) -> torch.Tensor:
    """``grad_out`` is not read here: the backward pass adds the bank gradients into it (see :func:`sampled_dwpw`)."""
    if common.runs_on_triton(x):
        return sampled_dwpw_forward(x, variant, stride, _unflat(variants), *banks, pool=pool)
    _check(x, variant, stride, _unflat(variants), tuple(banks), device=False, pool=pool)
    return sampled_dwpw_reference(x, variant, stride, _unflat(variants), *banks, pool=pool).contiguous()


@torch.library.custom_op("sswp_fast::sampled_dwpw_backward", mutates_args=("grad_out",))
def _sampled_dwpw_backward_op(
    dy: torch.Tensor, x: torch.Tensor, variant: torch.Tensor, stride: int, variants: list[int],
    banks: list[torch.Tensor], weight_grads: bool, grad_out: torch.Tensor | None, pool: torch.Tensor | None,
    idle_dx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dx`` and every bank's gradient in one flat tensor of the banks' dtype (an op's outputs may not alias,
    so not as views of one buffer); without ``weight_grads`` that tensor is empty, and so it is with
    ``grad_out``, into which the gradients are added."""
    if common.runs_on_triton(x):
        dx, flat = sampled_dwpw_backward(dy, x, variant, stride, _unflat(variants), *banks, weight_grads=weight_grads,
                                         grad_out=grad_out, pool=pool, idle_dx=idle_dx)
        return dx, flat.to(banks[0].dtype) if grad_out is None else banks[0].new_empty(0)
    dx, grads = _reference_backward(dy, x, variant, stride, _unflat(variants), banks, weight_grads, pool, idle_dx)
    flat = torch.cat([grad.reshape(-1) for grad in grads] if weight_grads else [banks[0].new_empty(0)])
    if grad_out is None or not weight_grads:
        return dx.contiguous(), flat
    grad_out.add_(flat.to(grad_out.dtype))
    return dx.contiguous(), banks[0].new_empty(0)


@_sampled_dwpw_op.register_fake
def _(x, variant, stride, variants, banks, grad_out, pool):
    first = _unflat(variants)[0]
    n, _, h, w = x.shape
    return x.new_empty((n, x.shape[1], _output_size(h, first, stride), _output_size(w, first, stride)))


@_sampled_dwpw_backward_op.register_fake
def _(dy, x, variant, stride, variants, banks, weight_grads, grad_out, pool, idle_dx=None):
    size = sum(bank.numel() for bank in banks) if weight_grads and grad_out is None else 0
    return x.new_empty(x.shape), banks[0].new_empty(size)


def _setup_context(ctx, inputs, output) -> None:
    x, variant, stride, variants, banks, grad_out, pool = inputs
    ctx.save_for_backward(x, variant, pool, *banks)
    ctx.conv = (stride, variants)
    ctx.grad_out = grad_out


def _backward(ctx, dy: torch.Tensor):
    x, variant, pool, *banks = ctx.saved_tensors
    weight_grads = any(ctx.needs_input_grad[4])  # an arch step's detached banks need none
    grad_out, ctx.grad_out = ctx.grad_out, None  # zero only once: a second backward pass gets fresh gradients
    stride, variants = ctx.conv
    dx, grads = sampled_dwpw_grads(dy, x, variant, stride, _unflat(variants), *banks, weight_grads=weight_grads,
                                   grad_out=grad_out, pool=pool)
    return dx, None, None, None, grads or [None] * len(banks), None, None


_sampled_dwpw_op.register_autograd(_backward, setup_context=_setup_context)


def sampled_dwpw(x: torch.Tensor, variant: torch.Tensor, stride: int, variants: tuple[Variant, ...],
                 *banks: torch.Tensor, grad_out: torch.Tensor | None = None,
                 pool: torch.Tensor | None = None) -> torch.Tensor:
    """Differentiable :func:`sampled_dwpw_forward` as the custom op ``torch.ops.sswp_fast.sampled_dwpw``, which
    ``torch.compile`` traces as one call: the Triton kernels on CUDA (and on CPU under the interpreter), the
    PyTorch reference on other CPU tensors. Autograd saves ``x``, ``variant`` and the banks only (the backward
    recomputes the depthwise activations).

    ``grad_out``: a zero fp32 tensor of the banks' total size, into which the (first) backward pass adds the bank
    gradients, which are then views of it: one fill for many ops (a network's,
    :mod:`sswp_fast.search.executors.device`) instead of one each.

    ``pool`` ([G], :mod:`.sampled_pool`'s kinds): the slots whose variant is negative run their pool instead
    (none where that is negative too), in the same launches forward and backward, so the group's input has one
    gradient rather than the convolutions' plus the pools'."""
    return torch.ops.sswp_fast.sampled_dwpw(x, variant, stride, _flat(tuple(Variant(*v) for v in variants)),
                                            list(banks), grad_out, pool)


def sampled_dwpw_grads(dy: torch.Tensor, x: torch.Tensor, variant: torch.Tensor, stride: int,
                       variants: tuple[Variant, ...], *banks: torch.Tensor, weight_grads: bool = True,
                       grad_out: torch.Tensor | None = None, pool: torch.Tensor | None = None,
                       idle_dx: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """:func:`sampled_dwpw`'s backward pass through the op ``torch.ops.sswp_fast.sampled_dwpw_backward``, for
    code that differentiates by hand (:mod:`sswp_fast.search.executors.device`): ``dx`` and the bank gradients in the
    banks' dtypes (None without ``weight_grads``; with ``grad_out``, added into it and viewed from it); ``idle_dx`` as
    :func:`sampled_dwpw_backward` takes it."""
    dx, flat = torch.ops.sswp_fast.sampled_dwpw_backward(dy, x, variant, stride, _flat(variants), list(banks),
                                                         weight_grads, grad_out if weight_grads else None, pool,
                                                         idle_dx)
    if not weight_grads:
        return dx, None
    flat = flat if grad_out is None else grad_out
    return dx, [grad.to(bank.dtype) for grad, bank in zip(split_grads(flat, banks), banks, strict=True)]


def _reference_backward(dy: torch.Tensor, x: torch.Tensor, variant: torch.Tensor, stride: int,
                        variants: tuple[Variant, ...], banks: list[torch.Tensor], weight_grads: bool = True,
                        pool: torch.Tensor | None = None,
                        idle_dx: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """:func:`sampled_dwpw_backward` in PyTorch, slot by slot (the indices read on the host), with explicit
    convolution and pooling gradients: a custom op's kernel runs below autograd. Without ``weight_grads`` the
    convolutions' weight gradients are not computed (the returned ones stay zero)."""
    dx = torch.zeros_like(x) if idle_dx is None else idle_dx.to(x.dtype, copy=True)
    grads = [torch.zeros_like(bank) for bank in banks]
    c = x.shape[1] // variant.shape[0]
    with torch.autocast(x.device.type, enabled=False):  # in x's dtype, as the kernel computes, whatever --amp says
        for g, (v, kind) in enumerate(zip(variant.tolist(), _pool_kinds(pool, variant), strict=True)):
            rows = slice(g * c, (g + 1) * c)
            if v < 0:
                if kind >= 0:
                    dx[:, rows] = pool_reference_backward(dy[:, rows].contiguous(), x[:, rows], kind, stride)
                continue
            k, pad, dil = variants[v]
            relu = torch.relu(x[:, rows])
            w_dw, w_pw = banks[2 * v][g].to(x.dtype), banks[2 * v + 1][g].to(x.dtype)
            hidden = F.conv2d(relu, w_dw, stride=stride, padding=pad, dilation=dil, groups=c)
            d_hidden, d_pw, _ = torch.ops.aten.convolution_backward(
                dy[:, rows].contiguous(), hidden, w_pw, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                [True, weight_grads, False])
            d_relu, d_dw, _ = torch.ops.aten.convolution_backward(
                d_hidden, relu, w_dw, None, [stride, stride], [pad, pad], [dil, dil], False, [0, 0], c,
                [True, weight_grads, False])
            dx[:, rows] = d_relu * (x[:, rows] > 0)
            if weight_grads:
                grads[2 * v][g] = d_dw
                grads[2 * v + 1][g] = d_pw
    return dx, grads


def _pool_kinds(pool: torch.Tensor | None, variant: torch.Tensor) -> list[int]:
    """Each slot's pool kind, read on the host (-1 for every slot without ``pool``)."""
    return [-1] * variant.shape[0] if pool is None else pool.tolist()


def sampled_dwpw_reference(x: torch.Tensor, variant: torch.Tensor, stride: int, variants: tuple[Variant, ...],
                           *banks: torch.Tensor, pool: torch.Tensor | None = None) -> torch.Tensor:
    """Pure-PyTorch reference: each slot through :func:`.dwpw.dwpw_reference` with its variant, or where that is
    negative through its pool (:func:`.sampled_pool.pool_reference`) or to zeros; the indices read on the host."""
    chosen = variant.tolist()
    slots = x.chunk(len(chosen), dim=1)
    outs = []
    with torch.autocast(x.device.type, enabled=False):  # in x's dtype, as the kernel computes, whatever --amp says
        for g, (v, kind, xs) in enumerate(zip(chosen, _pool_kinds(pool, variant), slots, strict=True)):
            if v >= 0:
                _, pad, dil = variants[v]
                w_dw, w_pw = (banks[2 * v + i][g].to(x.dtype) for i in (0, 1))
                outs.append(dwpw_reference(xs, w_dw, w_pw, stride, pad, dil))
            elif kind >= 0:
                outs.append(pool_reference(xs, kind, stride))
            else:
                n, c, h, w = xs.shape
                first = variants[0]
                outs.append(xs.new_zeros(n, c, _output_size(h, first, stride), _output_size(w, first, stride)))
    return torch.cat(outs, dim=1)
