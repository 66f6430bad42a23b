"""The elementwise tail of NASiam's mixed op: ``y = Σ_k w_k · act_k(x_k)`` in one launch, and its backward in one.

``blocks`` is the stack ``[K, N, D]`` of the candidates' pre-activation outputs, ``codes`` a K-list of activation
codes (:data:`ACTIVATION_CODES`: identity, relu, silu, hardswish, elu with alpha 1), ``weights`` the K mixing
weights (a device tensor: nothing is read on the host). The forward reads every block once and writes the [N, D]
sum; the backward reads every block and the output gradient once and writes
``grad_blocks[k] = w_k · act_k'(x_k) · grad_out`` and, per program, the partial sums
``Σ act_k(x_k) · grad_out`` of a [programs, K] table that PyTorch sums into ``grad_weights`` (deterministic: no
atomics). The codes are compile-time constants (packed 3 bits per block into one ``constexpr``), so each mix of
activations compiles to straight-line code, one specialisation per mix.

Dtypes: the output has the promoted dtype of ``blocks`` and ``weights`` (as the PyTorch expression gives);
arithmetic is in float64 when that is float64, otherwise in float32 (bf16 / fp16 blocks included, rounded once
on the store). ``grad_blocks`` has the dtype of ``blocks``, ``grad_weights`` that of ``weights``. Derivatives are
PyTorch's, boundaries included: relu' is 1 only for x > 0, hardswish' is 0 for x ≤ -3, (2x + 3) / 6 for
-3 < x < 3 and 1 for x ≥ 3, elu' is 1 for x > 0 and exp(x) otherwise, silu' = σ(x)(1 + x(1 - σ(x))).

Contents: the kernels ``_forward_kernel`` / ``_backward_kernel``, the launchers :func:`mixed_activation_forward` /
:func:`mixed_activation_backward`, the PyTorch kernels of the same two functions (for CPU tensors outside the
interpreter), the custom ops ``sswp_fast::activate_and_mix`` (autograd and fake kernels) and
``sswp_fast::activate_and_mix_backward``, and the entry point :func:`mixed_activation`, which takes names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from . import common
from .common import cast_out, jit, launcher

__all__ = ["ACTIVATION_CODES", "mixed_activation", "mixed_activation_backward", "mixed_activation_forward"]

ACTIVATION_CODES: dict[str, int] = {"identity": 0, "relu": 1, "silu": 2, "hardswish": 3, "elu": 4}
"""The activation code of each name; ``codes[k]`` picks block k's activation."""

MAX_BLOCKS = 16
"""At most this many blocks: their codes are packed 3 bits each into one 48-bit compile-time constant."""

_CODE_BITS = 3
_GPU_BLOCK = 1024
_INTERPRETER_BLOCK = 4096  # the interpreter's cost is per program and operation, not per element


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------


@jit
def _activation(x, CODE: tl.constexpr):
    """``act(x)`` for activation ``CODE`` (see ``ACTIVATION_CODES``), in ``x``'s (fp32 or fp64) type."""
    if CODE == 1:
        y = tl.where(x > 0, x, 0.0)
    elif CODE == 2:
        y = x / (1.0 + tl.exp(-x))
    elif CODE == 3:
        y = x * tl.minimum(tl.maximum(x + 3.0, 0.0), 6.0) / 6.0
    elif CODE == 4:
        y = tl.where(x > 0, x, tl.exp(tl.minimum(x, 0.0)) - 1.0)
    else:
        y = x
    return y


@jit
def _activation_and_slope(x, CODE: tl.constexpr):
    """``(act(x), act'(x))`` for activation ``CODE``, with PyTorch's derivative conventions at the kinks."""
    if CODE == 1:
        positive = x > 0
        y = tl.where(positive, x, 0.0)
        slope = tl.where(positive, 1.0, 0.0)
    elif CODE == 2:
        sig = 1.0 / (1.0 + tl.exp(-x))
        y = x * sig
        slope = sig * (1.0 + x * (1.0 - sig))
    elif CODE == 3:
        y = x * tl.minimum(tl.maximum(x + 3.0, 0.0), 6.0) / 6.0
        slope = tl.where(x <= -3.0, 0.0, tl.where(x < 3.0, x / 3.0 + 0.5, 1.0))
    elif CODE == 4:
        e = tl.exp(tl.minimum(x, 0.0))
        positive = x > 0
        y = tl.where(positive, x, e - 1.0)
        slope = tl.where(positive, 1.0, e)
    else:
        y = x
        slope = tl.full(x.shape, 1.0, x.dtype)
    return y, slope


@jit
def _forward_kernel(x_ptr, w_ptr, y_ptr, numel, K: tl.constexpr, CODES: tl.constexpr, ACC: tl.constexpr,
                    BLOCK: tl.constexpr, ROUND_BF16: tl.constexpr):
    """Grid (cdiv(N*D, BLOCK),): ``y = Σ_k w_k act_k(x_k)`` over one BLOCK of the flattened [N, D] elements."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x_ptrs = x_ptr + offs
    acc = tl.zeros([BLOCK], ACC)
    for k in tl.static_range(K):
        x = tl.load(x_ptrs, mask=mask, other=0.0).to(ACC)
        w = tl.load(w_ptr + k).to(ACC)
        acc += w * _activation(x, (CODES >> (3 * k)) & 7)  # 3 bits a code, as _packed
        x_ptrs += numel
    tl.store(y_ptr + offs, cast_out(acc, y_ptr, ROUND_BF16), mask=mask)


@jit
def _backward_kernel(x_ptr, w_ptr, dy_ptr, dx_ptr, partial_ptr, numel, K: tl.constexpr, CODES: tl.constexpr,
                     ACC: tl.constexpr, BLOCK: tl.constexpr, ROUND_BF16: tl.constexpr):
    """Grid (cdiv(N*D, BLOCK),): ``dx_k = w_k act_k'(x_k) dy`` over one BLOCK, and this program's partial sums
    ``Σ act_k(x_k) dy`` into row ``program_id`` of the [programs, K] table ``partial_ptr`` (type ACC)."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(ACC)
    x_ptrs = x_ptr + offs
    dx_ptrs = dx_ptr + offs
    for k in tl.static_range(K):
        x = tl.load(x_ptrs, mask=mask, other=0.0).to(ACC)
        w = tl.load(w_ptr + k).to(ACC)
        y, slope = _activation_and_slope(x, (CODES >> (3 * k)) & 7)
        tl.store(dx_ptrs, cast_out(w * slope * dy, dx_ptrs, ROUND_BF16), mask=mask)
        tl.store(partial_ptr + pid * K + k, tl.sum(y * dy, axis=0))
        x_ptrs += numel
        dx_ptrs += numel


# ----------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------


def _check(blocks: torch.Tensor, codes: Sequence[int], weights: torch.Tensor) -> None:
    """Shapes, dtypes and codes (not the device: the fake kernel calls this too)."""
    if blocks.dim() != 3:
        raise ValueError(f"blocks must be [K, N, D], got shape {tuple(blocks.shape)}")
    k = blocks.shape[0]
    if not 1 <= k <= MAX_BLOCKS:
        raise ValueError(f"need 1 to {MAX_BLOCKS} blocks, got {k}")
    if len(codes) != k:
        raise ValueError(f"need one activation code per block: {k} blocks, {len(codes)} codes")
    if any(c not in ACTIVATION_CODES.values() for c in codes):
        raise ValueError(f"activation codes must be in {sorted(ACTIVATION_CODES.values())}, got {list(codes)}")
    if weights.shape != (k,):
        raise ValueError(f"weights must have shape ({k},), got {tuple(weights.shape)}")
    if not blocks.is_floating_point() or not weights.is_floating_point():
        raise ValueError(f"blocks and weights must be floating point, got {blocks.dtype} and {weights.dtype}")
    if blocks.device != weights.device:
        raise ValueError(f"blocks on {blocks.device} but weights on {weights.device}")


def _out_dtype(blocks: torch.Tensor, weights: torch.Tensor) -> torch.dtype:
    return torch.promote_types(blocks.dtype, weights.dtype)


def _acc(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


def _packed(codes: Sequence[int]) -> int:
    return sum(c << (_CODE_BITS * k) for k, c in enumerate(codes))


def _block_size(numel: int, block: int | None, like: torch.Tensor) -> int:
    if block is not None:
        return block
    return min(_INTERPRETER_BLOCK, triton.next_power_of_2(numel)) if common.interpreted(like) else _GPU_BLOCK


def mixed_activation_forward(blocks: torch.Tensor, codes: Sequence[int], weights: torch.Tensor,
                             block: int | None = None) -> torch.Tensor:
    """``Σ_k weights[k] · act_{codes[k]}(blocks[k])`` ([N, D]) in one Triton launch; ``block`` (a power of two)
    overrides the elements per program."""
    _check(blocks, codes, weights)
    common.check_device(blocks)
    k, n, d = blocks.shape
    out_dtype = _out_dtype(blocks, weights)
    y = torch.empty((n, d), device=blocks.device, dtype=out_dtype)
    numel = n * d
    if numel == 0:
        return y
    size = _block_size(numel, block, blocks)
    launcher(_forward_kernel, blocks)[(triton.cdiv(numel, size),)](
        blocks.contiguous(), weights.contiguous(), y, numel, K=k, CODES=_packed(codes), ACC=_acc(out_dtype),
        BLOCK=size, ROUND_BF16=out_dtype == torch.bfloat16)
    return y


def mixed_activation_backward(grad: torch.Tensor, blocks: torch.Tensor, codes: Sequence[int], weights: torch.Tensor,
                              block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_blocks, grad_weights)`` of :func:`mixed_activation_forward` for the output gradient ``grad``: one
    Triton launch, then a PyTorch sum of its [programs, K] partial sums over the programs."""
    _check(blocks, codes, weights)
    common.check_device(blocks)
    k, n, d = blocks.shape
    if grad.shape != (n, d):
        raise ValueError(f"grad must be {(n, d)}, got shape {tuple(grad.shape)}")
    acc_dtype = torch.float64 if _out_dtype(blocks, weights) == torch.float64 else torch.float32
    numel = n * d
    grad_blocks = torch.empty((k, n, d), device=blocks.device, dtype=blocks.dtype)
    if numel == 0:
        return grad_blocks, torch.zeros_like(weights)
    size = _block_size(numel, block, blocks)
    programs = triton.cdiv(numel, size)
    partial = torch.empty((programs, k), device=blocks.device, dtype=acc_dtype)
    launcher(_backward_kernel, blocks)[(programs,)](
        blocks.contiguous(), weights.contiguous(), grad.contiguous(), grad_blocks, partial, numel, K=k,
        CODES=_packed(codes), ACC=_acc(acc_dtype), BLOCK=size,
        ROUND_BF16=blocks.dtype == torch.bfloat16 and acc_dtype == torch.float32)
    return grad_blocks, partial.sum(0).to(weights.dtype)


# ----------------------------------------------------------------------------------------------------------
# PyTorch kernels (CPU tensors outside the interpreter): explicit derivatives, as a custom op runs below autograd
# ----------------------------------------------------------------------------------------------------------


def _torch_activation_and_slope(x: torch.Tensor, code: int) -> tuple[torch.Tensor, torch.Tensor]:
    if code == ACTIVATION_CODES["relu"]:
        return torch.relu(x), (x > 0).to(x.dtype)
    if code == ACTIVATION_CODES["silu"]:
        sig = torch.sigmoid(x)
        return x * sig, sig * (1 + x * (1 - sig))
    if code == ACTIVATION_CODES["hardswish"]:
        return torch.nn.functional.hardswish(x), torch.where(x <= -3, 0.0, torch.where(x < 3, x / 3 + 0.5, 1.0))
    if code == ACTIVATION_CODES["elu"]:
        return torch.nn.functional.elu(x), torch.where(x > 0, torch.ones_like(x), torch.exp(x.clamp(max=0)))
    return x, torch.ones_like(x)


def _torch_forward(blocks: torch.Tensor, codes: Sequence[int], weights: torch.Tensor) -> torch.Tensor:
    acc_dtype = _out_dtype(blocks, weights)
    out = torch.zeros(blocks.shape[1:], device=blocks.device, dtype=acc_dtype)
    for x, code, w in zip(blocks, codes, weights, strict=True):
        out += w * _torch_activation_and_slope(x.to(acc_dtype), code)[0]
    return out


def _torch_backward(grad: torch.Tensor, blocks: torch.Tensor, codes: Sequence[int], weights: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    acc_dtype = _out_dtype(blocks, weights)
    grad = grad.to(acc_dtype)
    grad_blocks = torch.empty_like(blocks, memory_format=torch.contiguous_format)
    grad_weights = torch.empty_like(weights)
    for k, (x, code, w) in enumerate(zip(blocks, codes, weights, strict=True)):
        y, slope = _torch_activation_and_slope(x.to(acc_dtype), code)
        grad_blocks[k] = w * slope * grad
        grad_weights[k] = (y * grad).sum()
    return grad_blocks, grad_weights


# ----------------------------------------------------------------------------------------------------------
# Custom ops and entry point
# ----------------------------------------------------------------------------------------------------------


@torch.library.custom_op("sswp_fast::activate_and_mix", mutates_args=())
def _activate_and_mix_op(blocks: torch.Tensor, codes: list[int], weights: torch.Tensor) -> torch.Tensor:
    if common.runs_on_triton(blocks):
        return mixed_activation_forward(blocks, codes, weights)
    _check(blocks, codes, weights)
    return _torch_forward(blocks, codes, weights)


@torch.library.custom_op("sswp_fast::activate_and_mix_backward", mutates_args=())
def _activate_and_mix_backward_op(grad: torch.Tensor, blocks: torch.Tensor, codes: list[int], weights: torch.Tensor
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    if common.runs_on_triton(blocks):
        return mixed_activation_backward(grad, blocks, codes, weights)
    _check(blocks, codes, weights)
    return _torch_backward(grad, blocks, codes, weights)


@_activate_and_mix_op.register_fake
def _(blocks: torch.Tensor, codes: list[int], weights: torch.Tensor) -> torch.Tensor:
    _check(blocks, codes, weights)
    return blocks.new_empty(blocks.shape[1:], dtype=_out_dtype(blocks, weights))


@_activate_and_mix_backward_op.register_fake
def _(grad: torch.Tensor, blocks: torch.Tensor, codes: list[int], weights: torch.Tensor
      ) -> tuple[torch.Tensor, torch.Tensor]:
    _check(blocks, codes, weights)
    return blocks.new_empty(blocks.shape), weights.new_empty(weights.shape)


def _setup_context(ctx, inputs, output) -> None:
    blocks, codes, weights = inputs
    ctx.save_for_backward(blocks, weights)
    ctx.codes = codes


def _backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor]:
    blocks, weights = ctx.saved_tensors
    grad_blocks, grad_weights = torch.ops.sswp_fast.activate_and_mix_backward(grad, blocks, ctx.codes, weights)
    return grad_blocks, None, grad_weights


_activate_and_mix_op.register_autograd(_backward, setup_context=_setup_context)


def mixed_activation(blocks: torch.Tensor, activations: Sequence[str], weights: torch.Tensor) -> torch.Tensor:
    """Differentiable ``Σ_k weights[k] · act_k(blocks[k])`` for stacked ``blocks`` [K, N, D] and activation names
    (keys of :data:`ACTIVATION_CODES`), as the custom op ``torch.ops.sswp_fast.activate_and_mix``: the Triton
    kernels on CUDA (and on CPU under the interpreter), PyTorch on other CPU tensors. Autograd saves ``blocks``
    and ``weights`` only; the backward recomputes the activations."""
    unknown = [a for a in activations if a not in ACTIVATION_CODES]
    if unknown:
        raise ValueError(f"unknown activations {unknown}; use {', '.join(ACTIVATION_CODES)}")
    return torch.ops.sswp_fast.activate_and_mix(blocks, [ACTIVATION_CODES[a] for a in activations], weights)
