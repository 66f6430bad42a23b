"""BatchNorm (``nn.BatchNorm2d`` / ``F.batch_norm``) in Triton, for the BNs of the DARTS ops.

Semantics are exactly those of ``torch.nn.functional.batch_norm(input, running_mean, running_var, weight, bias,
training, momentum, eps)``: in training mode the output is normalised with the batch mean and the *biased*
batch variance, and the running buffers (when given) are updated in place with the *unbiased* variance,
``running = (1 - momentum) * running + momentum * batch``; in eval mode the running statistics are used. Inputs
are [N, C, *] (the search engine uses [N, C, H, W]); they are made contiguous, any C works. fp32, fp16 and bf16
inputs are supported; statistics and all accumulation are fp32, the output has the input dtype and the
parameter gradients the parameters' dtype.

Reduction scheme (shared by the statistics pass and the backward sums). Channel ``c`` owns the ``M = N*H*W``
elements ``x[n, c, hw]``; they are indexed by a flat ``i in [0, M)`` (``n = i // HW``, ``hw = i % HW``, so every
block load is one or a few contiguous runs) and split into ``SPLITS`` chunks of ``ITERS * BLOCK`` elements. The
grid is ``(C, SPLITS)``: each program walks its chunk in ``BLOCK``-wide steps. ``SPLITS`` is chosen so that
``C * SPLITS`` is about 4 programs per SM on a GPU (the DARTS BNs have small C and large N*H*W, so one program
per channel would leave most SMs idle) and about 32 programs under the interpreter (which costs ~1.3 ms per
program). Every program writes its partial result to its own slot of an fp32 ``[C, SPLITS]`` buffer and a
second pass combines the slots: no atomics, so results are deterministic (bit-reproducible run to run).

* Statistics are numerically sound for fp32: each lane of a program runs Welford's update over its elements,
  shifted by the channel's first element ``x[0, c, 0]`` (so the running means stay near zero even when
  ``|mean| >> std``), the lanes are merged with Chan's exact parallel formula
  (``M2 = sum M2_l + sum n_l (mean_l - mean)^2``), and the finalize-apply kernel merges the chunks the same way
  and adds the shift back. No ``E[x^2] - E[x]^2`` cancellation: with mean 1e4 and std 0.5 the rstd is within
  1.2e-7 (relative) of fp64.
* The backward sums (``sum dout`` and ``sum dout * xhat``) are plain fp32 sums, one lane accumulator each.

Contents (one concept, Liger-Kernel style):

* ``_bn_stats_partial_kernel`` (grid ``(C, SPLITS)``): per-chunk mean and M2.
* ``_bn_finalize_apply_kernel`` (grid ``(C, SPLITS)``): each program merges its channel's chunks into mean, rstd
  and the unbiased variance (``_finalize``; the first chunk's program stores the statistics and updates the
  running buffers in place when given), then ``y = (x - mean) * rstd * weight + bias`` on its chunk: the
  training forward is two launches.
* ``_bn_apply_kernel`` (grid ``(C, SPLITS)``): ``y = (x - mean) * rstd * weight + bias`` with given statistics.
* ``_bn_bwd_reduce_kernel`` (grid ``(C, SPLITS)``): per-chunk ``sum dout`` and ``sum dout * xhat``.
* ``_bn_bwd_dx_kernel`` (grid ``(C, SPLITS)``): training ``dx = w*rstd * (dout - mean(dout) - xhat *
  mean(dout*xhat))``, each program summing its channel's chunk sums itself (no launch in between); eval
  ``dx = w*rstd_running * dout`` (the running stats are constants).
* The custom ops ``sswp_fast::batch_norm_train`` (the training forward; mutates the running buffers and the
  count bank), ``sswp_fast::batch_norm_apply`` and ``sswp_fast::batch_norm_backward``, each with its fake kernel,
  and their entry points ``bn_train_forward``, ``bn_forward``, ``bn_backward`` (which the device executor's
  hand-written backward calls); ``BatchNormFn`` (the ``torch.autograd.Function`` over them, which saves only
  ``x``, the per-channel ``mean`` and ``rstd``, and ``weight``, a parameter that the backward needs, never a
  normalised copy of ``x``); ``batch_norm`` (drop-in for ``F.batch_norm``); ``bn_reference`` (the pure-PyTorch
  reference, ``F.batch_norm`` itself).
* Banked running statistics (the device executor's, :mod:`sswp_fast.search.executors.banks`): the buffers are ``[R, G,
  C/G]`` banks and a ``[G]`` index picks the row each slot of ``G`` channel blocks reads and updates; the
  finalize-apply kernel does the row update and the batch count (``_bank_offsets``). ``bn_banked_reference`` is
  its PyTorch reference (gather, ``F.batch_norm``, scatter).

On CPU tensors the kernels run only under the Triton interpreter (``TRITON_INTERPRET=1`` at the launch, see
:mod:`.common`); otherwise the launchers raise a one-line ``RuntimeError``. Offsets are int32: inputs must have
fewer than 2**31 elements.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .common import cast_out, check_device, interpreted, jit, launcher

__all__ = [
    "BatchNormFn",
    "batch_norm",
    "bn_backward",
    "bn_banked_reference",
    "bn_forward",
    "bn_reference",
    "bn_train_forward",
]


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------


@jit
def _channel_offsets(idx, c, C, HW):
    """Memory offsets of the flat per-channel indices ``idx`` (``n*HW + hw``) of channel ``c`` in [N, C, HW]."""
    n = idx // HW
    return n * (C * HW) + c * HW + (idx - n * HW)


@jit
def _running_update(rm_ptr, rv_ptr, offs, mask, mean, var_unbiased, momentum, RTNE_BF16: tl.constexpr):
    """running = (1 - momentum) * running + momentum * batch, in fp32, stored in the buffers' dtype."""
    rm = tl.load(rm_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    rv = tl.load(rv_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    rm = momentum * mean + (1.0 - momentum) * rm
    rv = momentum * var_unbiased + (1.0 - momentum) * rv
    tl.store(rm_ptr + offs, cast_out(rm, rm_ptr, RTNE_BF16), mask=mask)
    tl.store(rv_ptr + offs, cast_out(rv, rv_ptr, RTNE_BF16), mask=mask)


@jit
def _bn_stats_partial_kernel(x_ptr, pmean_ptr, pm2_ptr, C, HW, M, SPLITS, ITERS, BLOCK: tl.constexpr):
    """Grid (C, SPLITS): mean (of x - x[0, c, 0]) and M2 of one chunk of one channel, by lane Welford."""
    c = tl.program_id(0)
    s = tl.program_id(1)
    start = s * ITERS * BLOCK
    lanes = tl.arange(0, BLOCK)
    cnt = tl.zeros([BLOCK], dtype=tl.float32)
    mu = tl.zeros([BLOCK], dtype=tl.float32)
    m2 = tl.zeros([BLOCK], dtype=tl.float32)
    shift = tl.load(x_ptr + c * HW).to(tl.float32)  # x[0, c, 0]: Welford on x - shift keeps mu near 0
    for it in range(0, ITERS):
        idx = start + it * BLOCK + lanes
        mask = idx < M
        x = tl.load(x_ptr + _channel_offsets(idx, c, C, HW), mask=mask, other=0.0).to(tl.float32) - shift
        cnt_new = cnt + mask.to(tl.float32)
        delta = x - mu
        mu = mu + tl.where(mask, delta / tl.maximum(cnt_new, 1.0), 0.0)
        m2 = m2 + tl.where(mask, delta * (x - mu), 0.0)
        cnt = cnt_new
    # Chan's merge of the lanes (every chunk holds at least one element, so n >= 1)
    n = tl.sum(cnt, axis=0)
    mean = tl.sum(cnt * mu, axis=0) / n
    d = mu - mean
    m2_all = tl.sum(m2, axis=0) + tl.sum(cnt * d * d, axis=0)
    tl.store(pmean_ptr + c * SPLITS + s, mean)
    tl.store(pm2_ptr + c * SPLITS + s, m2_all)


@jit
def _bank_offsets(offs_c, mask_c, rows_ptr, count_ptr, SLOT_C, SLOTS, ROWS):
    """Offsets of channels ``offs_c`` in ``[ROWS, SLOTS, SLOT_C]`` banks, where channel ``k`` is channel
    ``k % SLOT_C`` of slot ``k // SLOT_C`` and a slot's row is ``rows[slot]`` (negative: counted from the end, as
    torch indexing does); counts one more batch in the slot's ``[ROWS, SLOTS]`` count (once per slot)."""
    slot = offs_c // SLOT_C
    row = tl.load(rows_ptr + slot, mask=mask_c, other=0)
    row = tl.where(row < 0, row + ROWS, row)
    first = mask_c & (offs_c - slot * SLOT_C == 0)
    count = tl.load(count_ptr + row * SLOTS + slot, mask=first, other=0)
    tl.store(count_ptr + row * SLOTS + slot, count + 1, mask=first)
    return (row * SLOTS + slot) * SLOT_C + (offs_c - slot * SLOT_C)


@jit
def _finalize(
    x_ptr, pmean_ptr, pm2_ptr, mean_ptr, rstd_ptr, varu_ptr, rm_ptr, rv_ptr, rows_ptr, count_ptr, offs_c, mask_c,
    store_c, HW, M, SPLITS, CHUNK, inv_m, inv_m1, eps, momentum, SLOT_C, SLOTS, ROWS,
    HAS_RUNNING: tl.constexpr, BANKED: tl.constexpr, RTNE_BF16: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Channels ``offs_c`` (those in ``mask_c``): merge their SPLITS chunks into mean, rstd and the unbiased
    variance, returned as ``(mean, rstd)``; where ``store_c``, store the three and update the running buffers."""
    offs_s = tl.arange(0, BLOCK_S)
    mask_s = offs_s < SPLITS
    mask = mask_c[:, None] & mask_s[None, :]
    slots = offs_c[:, None] * SPLITS + offs_s[None, :]
    pmean = tl.load(pmean_ptr + slots, mask=mask, other=0.0)
    pm2 = tl.load(pm2_ptr + slots, mask=mask, other=0.0)
    cnt = tl.where(mask_s, tl.minimum(M - offs_s * CHUNK, CHUNK), 0).to(tl.float32)  # elements per chunk
    mean = tl.sum(pmean * cnt[None, :], axis=1) * inv_m
    d = tl.where(mask, pmean - mean[:, None], 0.0)
    m2 = tl.sum(pm2 + cnt[None, :] * d * d, axis=1)
    mean += tl.load(x_ptr + offs_c * HW, mask=mask_c, other=0.0).to(tl.float32)  # undo the shift
    rstd = tl.rsqrt(m2 * inv_m + eps)
    var_unbiased = m2 * inv_m1
    tl.store(mean_ptr + offs_c, mean, mask=store_c)
    tl.store(rstd_ptr + offs_c, rstd, mask=store_c)
    tl.store(varu_ptr + offs_c, var_unbiased, mask=store_c)
    if HAS_RUNNING:
        running = offs_c
        if BANKED:
            running = _bank_offsets(offs_c, store_c, rows_ptr, count_ptr, SLOT_C, SLOTS, ROWS)
        _running_update(rm_ptr, rv_ptr, running, store_c, mean, var_unbiased, momentum, RTNE_BF16)
    return mean, rstd


@jit
def _bn_apply_kernel(
    x_ptr, y_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, C, HW, M, ITERS,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, RTNE_BF16: tl.constexpr, BLOCK: tl.constexpr,
):
    """Grid (C, SPLITS): y = (x - mean) * (rstd * weight) + bias over one chunk of one channel."""
    c = tl.program_id(0)
    _apply_chunk(x_ptr, y_ptr, w_ptr, b_ptr, c, tl.program_id(1), tl.load(mean_ptr + c).to(tl.float32),
                 tl.load(rstd_ptr + c).to(tl.float32), C, HW, M, ITERS, HAS_WEIGHT, HAS_BIAS, RTNE_BF16, BLOCK)


@jit
def _apply_chunk(x_ptr, y_ptr, w_ptr, b_ptr, c, s, mean, rstd, C, HW, M, ITERS, HAS_WEIGHT: tl.constexpr,
                 HAS_BIAS: tl.constexpr, RTNE_BF16: tl.constexpr, BLOCK: tl.constexpr):
    """Chunk ``s`` of channel ``c``: y = (x - mean) * (rstd * weight) + bias."""
    scale = rstd
    if HAS_WEIGHT:
        scale = scale * tl.load(w_ptr + c).to(tl.float32)
    shift = 0.0
    if HAS_BIAS:
        shift = tl.load(b_ptr + c).to(tl.float32)
    start = s * ITERS * BLOCK
    lanes = tl.arange(0, BLOCK)
    for it in range(0, ITERS):
        idx = start + it * BLOCK + lanes
        mask = idx < M
        offs = _channel_offsets(idx, c, C, HW)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = (x - mean) * scale + shift
        tl.store(y_ptr + offs, cast_out(y, y_ptr, RTNE_BF16), mask=mask)


@jit
def _bn_finalize_apply_kernel(
    x_ptr, y_ptr, pmean_ptr, pm2_ptr, mean_ptr, rstd_ptr, varu_ptr, rm_ptr, rv_ptr, rows_ptr, count_ptr, w_ptr, b_ptr,
    C, HW, M, SPLITS, ITERS, CHUNK, inv_m, inv_m1, eps, momentum, SLOT_C, SLOTS, ROWS,
    HAS_RUNNING: tl.constexpr, BANKED: tl.constexpr, RTNE_BF16_RUNNING: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr, RTNE_BF16: tl.constexpr, BLOCK: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Grid (C, SPLITS): :func:`_finalize` for one channel, done by every chunk's program for itself (the first
    chunk's stores the statistics and updates the running buffers), then :func:`_apply_chunk` on the chunk: a
    training forward in two launches."""
    c = tl.program_id(0)
    s = tl.program_id(1)
    offs_c = c + tl.arange(0, 1)
    mean, rstd = _finalize(x_ptr, pmean_ptr, pm2_ptr, mean_ptr, rstd_ptr, varu_ptr, rm_ptr, rv_ptr, rows_ptr,
                           count_ptr, offs_c, offs_c < C, (offs_c < C) & (s == 0), HW, M, SPLITS, CHUNK, inv_m,
                           inv_m1, eps, momentum, SLOT_C, SLOTS, ROWS, HAS_RUNNING, BANKED, RTNE_BF16_RUNNING,
                           BLOCK_S)
    _apply_chunk(x_ptr, y_ptr, w_ptr, b_ptr, c, s, tl.sum(mean, axis=0), tl.sum(rstd, axis=0), C, HW, M, ITERS,
                 HAS_WEIGHT, HAS_BIAS, RTNE_BF16, BLOCK)


@jit
def _bn_bwd_reduce_kernel(
    dy_ptr, x_ptr, mean_ptr, rstd_ptr, part_ptr, C, HW, M, SPLITS, ITERS, BLOCK: tl.constexpr,
):
    """Grid (C, SPLITS): part[0, c, s] = sum dout, part[1, c, s] = sum dout * xhat over one chunk."""
    c = tl.program_id(0)
    s = tl.program_id(1)
    mean = tl.load(mean_ptr + c).to(tl.float32)
    rstd = tl.load(rstd_ptr + c).to(tl.float32)
    start = s * ITERS * BLOCK
    lanes = tl.arange(0, BLOCK)
    acc_dy = tl.zeros([BLOCK], dtype=tl.float32)
    acc_dyxc = tl.zeros([BLOCK], dtype=tl.float32)
    for it in range(0, ITERS):
        idx = start + it * BLOCK + lanes
        mask = idx < M
        offs = _channel_offsets(idx, c, C, HW)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        acc_dy += dy
        acc_dyxc += tl.where(mask, dy * (x - mean), 0.0)
    tl.store(part_ptr + c * SPLITS + s, tl.sum(acc_dy, axis=0))
    tl.store(part_ptr + (C + c) * SPLITS + s, tl.sum(acc_dyxc, axis=0) * rstd)


@jit
def _bn_bwd_dx_kernel(
    dy_ptr, x_ptr, dx_ptr, mean_ptr, rstd_ptr, w_ptr, part_ptr, C, HW, M, SPLITS, ITERS, inv_m,
    HAS_WEIGHT: tl.constexpr, TRAINING: tl.constexpr, RTNE_BF16: tl.constexpr, BLOCK: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Grid (C, SPLITS): dx of one chunk of one channel. In training each program first sums its channel's
    chunks of ``part`` (fp32 [2, C, SPLITS] from ``_bn_bwd_reduce_kernel``: sum dout; sum dout*xhat) in a fixed
    order, so that no launch sums them in between."""
    c = tl.program_id(0)
    s = tl.program_id(1)
    rstd = tl.load(rstd_ptr + c).to(tl.float32)
    scale = rstd
    if HAS_WEIGHT:
        scale = rstd * tl.load(w_ptr + c).to(tl.float32)
    if TRAINING:
        mean = tl.load(mean_ptr + c).to(tl.float32)
        chunks = tl.arange(0, BLOCK_S)
        in_part = chunks < SPLITS
        mean_dy = tl.sum(tl.load(part_ptr + c * SPLITS + chunks, mask=in_part, other=0.0), axis=0) * inv_m
        mean_dyxhat = tl.sum(tl.load(part_ptr + (C + c) * SPLITS + chunks, mask=in_part, other=0.0), axis=0) * inv_m
    start = s * ITERS * BLOCK
    lanes = tl.arange(0, BLOCK)
    for it in range(0, ITERS):
        idx = start + it * BLOCK + lanes
        mask = idx < M
        offs = _channel_offsets(idx, c, C, HW)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if TRAINING:
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            xhat = (x - mean) * rstd
            dx = scale * (dy - mean_dy - xhat * mean_dyxhat)
        else:
            dx = scale * dy
        tl.store(dx_ptr + offs, cast_out(dx, dx_ptr, RTNE_BF16), mask=mask)


# ----------------------------------------------------------------------------------------------------------
# Launch planning and checks
# ----------------------------------------------------------------------------------------------------------

@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _plan(m: int, c: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK, ITERS, SPLITS, num_warps) for ``c`` channels of ``m`` elements each: grid (c, SPLITS), each
    program reducing/mapping ITERS blocks of BLOCK elements (the last chunk of a channel may be shorter)."""
    if device.type == "cuda":
        block = min(1024, max(128, triton.next_power_of_2(m)))  # at most 4 variants: 128 .. 1024
        target = 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    else:  # interpreter: ~1.3 ms per program, and wide numpy blocks are cheap
        block = min(_INTERP_MAX_BLOCK, triton.next_power_of_2(m))
        target = _INTERP_PROGRAMS
    splits = max(1, min(triton.cdiv(m, block), triton.cdiv(target, c), _MAX_SPLITS))
    iters = triton.cdiv(triton.cdiv(m, splits), block)
    splits = triton.cdiv(m, iters * block)  # no empty chunk
    num_warps = max(1, min(4, block // 256))
    return block, iters, splits, num_warps


_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_SPLITS = 1024  # chunks per channel; the finalize-apply kernel holds all of a channel's chunks in one tile
_INTERP_MAX_BLOCK = 4096  # interpreter plan (the tests shrink both to exercise multi-chunk, multi-block paths)
_INTERP_PROGRAMS = 32


def _shape(x: torch.Tensor) -> tuple[int, int, int]:
    """(N, C, HW) of an [N, C, *] input, after the dtype and size checks."""
    if x.dim() < 2:
        raise ValueError(f"batch_norm expects an input of shape [N, C, *], got {tuple(x.shape)}")
    if x.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"batchnorm Triton kernels support float32, float16 and bfloat16 inputs, got {x.dtype}")
    if x.numel() >= 2**31:
        raise ValueError(f"batchnorm Triton kernels use int32 offsets; the input has {x.numel()} >= 2**31 elements")
    n, c = x.shape[0], x.shape[1]
    return n, c, x.numel() // max(1, n * c)


def _rtne_bf16(*outputs: torch.Tensor) -> bool:
    """Whether the kernels must round bf16 outputs themselves (only the interpreter's, see ``common.cast_out``)."""
    return any(t.dtype == torch.bfloat16 and interpreted(t) for t in outputs)


# ----------------------------------------------------------------------------------------------------------
# Launchers: the kernels of the custom ops
# ----------------------------------------------------------------------------------------------------------


class _ChunkStats:
    """A training forward's first launch (per-chunk statistics of ``x``, checked against the running buffers and
    banks of :func:`bn_train_forward`), and what the finalizing launch needs: its arguments, flags and outputs."""

    def __init__(self, x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                 rows: torch.Tensor | None, count: torch.Tensor | None):
        check_device(x, running_mean, running_var, rows, count)
        if (running_mean is None) != (running_var is None):
            raise ValueError("bn_train_forward needs both running_mean and running_var, or neither")
        if running_mean is not None and not (running_mean.is_contiguous() and running_var.is_contiguous()):
            raise ValueError("bn_train_forward needs contiguous running buffers (they are updated in place)")
        self.x = x = x.contiguous()
        _, self.c, self.hw = _shape(x)
        self.banked = rows is not None
        if self.banked:
            _check_banks(self.c, running_mean, running_var, rows, count)
            rows = rows.contiguous()  # the kernel reads it flat (a path's column of probed ops is strided)
        self.m = x.numel() // self.c
        if self.m == 0:
            raise ValueError("bn_train_forward got an empty input")
        self.running, self.rows, self.count = (running_mean, running_var), rows, count
        self.block, self.iters, self.splits, self.num_warps = _plan(self.m, self.c, x.device)
        self.pmean = torch.empty((self.c, self.splits), device=x.device, dtype=torch.float32)
        self.pm2 = torch.empty_like(self.pmean)
        launcher(_bn_stats_partial_kernel, x)[(self.c, self.splits)](
            x, self.pmean, self.pm2, self.c, self.hw, self.m, self.splits, self.iters, BLOCK=self.block,
            num_warps=self.num_warps)
        self.mean = torch.empty(self.c, device=x.device, dtype=torch.float32)
        self.rstd = torch.empty_like(self.mean)
        self.var_unbiased = torch.empty_like(self.mean)

    def finalize_args(self, eps: float, momentum: float) -> dict:
        """The finalize-apply kernel's statistics arguments by name."""
        mean, (rm, rv), banked, m = self.mean, self.running, self.banked, self.m
        return {"x_ptr": self.x, "pmean_ptr": self.pmean, "pm2_ptr": self.pm2, "mean_ptr": mean, "rstd_ptr": self.rstd,
                "varu_ptr": self.var_unbiased, "rm_ptr": mean if rm is None else rm,
                "rv_ptr": mean if rv is None else rv, "rows_ptr": self.rows if banked else mean,
                "count_ptr": self.count if banked else mean, "C": self.c, "HW": self.hw, "M": m,
                "SPLITS": self.splits, "CHUNK": self.iters * self.block, "inv_m": 1.0 / m,
                "inv_m1": 1.0 / (m - 1) if m > 1 else float("nan"), "eps": float(eps), "momentum": float(momentum),
                "SLOT_C": self.c // self.rows.numel() if banked else 1, "SLOTS": self.rows.numel() if banked else 1,
                "ROWS": rm.shape[0] if banked else 1}

    def finalize_flags(self) -> dict:
        has_running = self.running[0] is not None
        return {"HAS_RUNNING": has_running, "BANKED": self.banked,
                "RTNE_BF16_RUNNING": has_running and _rtne_bf16(*self.running)}


def _train_forward(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                   running_mean: torch.Tensor | None, running_var: torch.Tensor | None, momentum: float,
                   rows: torch.Tensor | None, count: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                  torch.Tensor]:
    """:func:`bn_train_forward`'s two launches."""
    stats = _ChunkStats(x, running_mean, running_var, rows, count)
    y = torch.empty_like(stats.x)
    launcher(_bn_finalize_apply_kernel, stats.x)[(stats.c, stats.splits)](
        **stats.finalize_args(eps, momentum), y_ptr=y, w_ptr=weight.contiguous() if weight is not None else stats.mean,
        b_ptr=bias.contiguous() if bias is not None else stats.mean, ITERS=stats.iters, **stats.finalize_flags(),
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, RTNE_BF16=_rtne_bf16(y), BLOCK=stats.block,
        BLOCK_S=triton.next_power_of_2(stats.splits), num_warps=stats.num_warps)
    return y, stats.mean, stats.rstd


def _check_banks(c: int, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                 rows: torch.Tensor, count: torch.Tensor | None) -> None:
    """One-line errors for banked running buffers that do not fit ``c`` channels in ``rows.numel()`` slots."""
    if running_mean is None or count is None:
        raise ValueError("banked BatchNorm (rows given) needs running_mean, running_var and count banks")
    slots = rows.numel()
    shape = (running_mean.shape[0], slots, c // max(1, slots))
    if c % max(1, slots) or tuple(running_mean.shape) != shape or tuple(running_var.shape) != shape:
        raise ValueError(f"banked BatchNorm: {c} channels in {slots} slots need [rows, {slots}, {c // max(1, slots)}]"
                         f" running banks, got {tuple(running_mean.shape)} and {tuple(running_var.shape)}")
    if tuple(count.shape) != shape[:2] or not count.is_contiguous():
        raise ValueError(f"banked BatchNorm: the count bank must be a contiguous {shape[:2]}, got {tuple(count.shape)}")


def _apply(x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor | None,
           bias: torch.Tensor | None) -> torch.Tensor:
    """:func:`bn_forward`'s launch."""
    check_device(x, mean, rstd, weight, bias)
    x = x.contiguous()
    _, c, hw = _shape(x)
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    m = x.numel() // c
    block, iters, splits, num_warps = _plan(m, c, x.device)
    launcher(_bn_apply_kernel, x)[(c, splits)](
        x, y, mean.contiguous(), rstd.contiguous(),
        weight.contiguous() if weight is not None else mean, bias.contiguous() if bias is not None else mean,
        c, hw, m, iters,
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, RTNE_BF16=_rtne_bf16(y),
        BLOCK=block, num_warps=num_warps,
    )
    return y


def _backward(dout: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
              weight: torch.Tensor | None, training: bool, need_dx: bool,
              need_param_grads: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`bn_backward`'s launches: ``dx`` (empty unless ``need_dx``) and the fp32 ``[2, C]`` sums ``(sum dout,
    sum dout * xhat)`` (empty unless ``need_param_grads``)."""
    check_device(dout, x, mean, rstd, weight)
    x = x.contiguous()
    dout = dout.contiguous()
    _, c, hw = _shape(x)
    m = x.numel() // c
    block, iters, splits, num_warps = _plan(m, c, x.device)
    mean = mean.contiguous()
    rstd = rstd.contiguous()
    part = None
    if training or need_param_grads:
        part = torch.empty((2, c, splits), device=x.device, dtype=torch.float32)
        launcher(_bn_bwd_reduce_kernel, x)[(c, splits)](
            dout, x, mean, rstd, part, c, hw, m, splits, iters, BLOCK=block, num_warps=num_warps
        )
    dx = x.new_empty(0)
    if need_dx:
        dx = torch.empty_like(x)
        launcher(_bn_bwd_dx_kernel, x)[(c, splits)](
            dout, x, dx, mean, rstd, weight.contiguous() if weight is not None else rstd,
            part if part is not None else rstd, c, hw, m, splits, iters, 1.0 / m,
            HAS_WEIGHT=weight is not None, TRAINING=bool(training), RTNE_BF16=_rtne_bf16(dx),
            BLOCK=block, BLOCK_S=triton.next_power_of_2(splits), num_warps=num_warps,
        )
    # a fixed-order, deterministic reduction of the chunks
    sums = part.sum(dim=2) if need_param_grads else torch.empty(0, device=x.device, dtype=torch.float32)
    return dx, sums


# ----------------------------------------------------------------------------------------------------------
# Custom ops, autograd and functional entry points
# ----------------------------------------------------------------------------------------------------------


@torch.library.custom_op("sswp_fast::batch_norm_train", mutates_args=("running_mean", "running_var", "count"))
def _batch_norm_train_op(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                         running_mean: torch.Tensor | None, running_var: torch.Tensor | None, momentum: float,
                         rows: torch.Tensor | None,
                         count: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _train_forward(x, weight, bias, eps, running_mean, running_var, momentum, rows, count)


@torch.library.custom_op("sswp_fast::batch_norm_apply", mutates_args=())
def _batch_norm_apply_op(x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor | None,
                         bias: torch.Tensor | None) -> torch.Tensor:
    return _apply(x, mean, rstd, weight, bias)


@torch.library.custom_op("sswp_fast::batch_norm_backward", mutates_args=())
def _batch_norm_backward_op(dout: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                            weight: torch.Tensor | None, training: bool, need_dx: bool,
                            need_param_grads: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _backward(dout, x, mean, rstd, weight, training, need_dx, need_param_grads)


@_batch_norm_train_op.register_fake
def _(x, weight, bias, eps, running_mean, running_var, momentum, rows, count):
    mean = x.new_empty(x.shape[1], dtype=torch.float32)
    return x.new_empty(x.shape), mean, torch.empty_like(mean)


@_batch_norm_apply_op.register_fake
def _(x, mean, rstd, weight, bias):
    return x.new_empty(x.shape)


@_batch_norm_backward_op.register_fake
def _(dout, x, mean, rstd, weight, training, need_dx, need_param_grads):
    sums = (2, x.shape[1]) if need_param_grads else (0,)
    return x.new_empty(x.shape if need_dx else (0,)), x.new_empty(sums, dtype=torch.float32)


def bn_train_forward(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    momentum: float = 0.1,
    rows: torch.Tensor | None = None,
    count: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training-mode forward, ``(y, mean, rstd)`` (fp32 ``[C]`` batch statistics, ``rstd = 1 / sqrt(biased_var +
    eps)``), in two launches (chunk statistics, then their merge fused into the apply), as the custom op
    ``torch.ops.sswp_fast.batch_norm_train``. When both running buffers are given they are updated in place in the
    second launch: ``running = (1 - momentum) * running + momentum * batch`` (batch variance unbiased).

    Banked buffers: with ``rows`` (integer ``[G]``) the running buffers are banks ``[R, G, C/G]`` and ``count``
    ``[R, G]`` (``num_batches_tracked`` per row); channel block ``g`` of ``x`` updates row ``rows[g]`` of slot
    ``g`` (negative rows count from the end) and adds one to its count, in the same launch.
    """
    y, mean, rstd = torch.ops.sswp_fast.batch_norm_train(x, weight, bias, float(eps), running_mean, running_var,
                                                         float(momentum), rows, count)
    return y, mean, rstd


def bn_forward(
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(x - mean) * rstd * weight + bias`` per channel (weight/bias optional), in the input dtype: one launch, the
    custom op ``torch.ops.sswp_fast.batch_norm_apply``."""
    return torch.ops.sswp_fast.batch_norm_apply(x, mean, rstd, weight, bias)


def bn_backward(
    dout: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    weight: torch.Tensor | None = None,
    training: bool = True,
    need_dx: bool = True,
    need_param_grads: bool | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``bn_forward(x, mean, rstd, weight, bias)``: ``(dx, dweight, dbias)``, by the custom op
    ``torch.ops.sswp_fast.batch_norm_backward``.

    ``training=True``: mean/rstd are the batch statistics of ``x`` and the gradient flows through them,
    ``dx = weight*rstd * (dout - mean(dout) - xhat * mean(dout * xhat))``. ``training=False``: mean/rstd are
    constants (from the running buffers), ``dx = weight*rstd * dout``. ``dweight = sum(dout * xhat)`` and
    ``dbias = sum(dout)`` per channel, fp32, returned when ``need_param_grads`` (default: ``weight is not None``);
    otherwise None. ``dx`` has the dtype of ``x`` (None unless ``need_dx``).
    """
    if need_param_grads is None:
        need_param_grads = weight is not None
    dx, sums = torch.ops.sswp_fast.batch_norm_backward(dout, x, mean, rstd, weight, bool(training), bool(need_dx),
                                                       bool(need_param_grads))
    dx = dx if need_dx else None
    if not need_param_grads:
        return dx, None, None
    return dx, sums[1], sums[0]


class BatchNormFn(torch.autograd.Function):
    """BatchNorm on the custom ops; saves only ``x``, per-channel ``mean``/``rstd`` and ``weight``.

    A ``torch.autograd.Function`` rather than ``register_autograd``: a training forward updates the running
    statistics in the launch that normalises, so its op mutates its inputs, and ``torch.library`` registers an
    autograd formula for functional ops only. The backward is once-differentiable (double backward raises;
    ``F.batch_norm`` supports it).

    ``apply(x, weight, bias, running_mean, running_var, training, momentum, eps, rows, count, batch_mean,
    batch_rstd)``; in training mode the running buffers (if given) are updated in place, in eval mode they provide
    mean and rstd. With ``rows`` they are banks, as :func:`bn_train_forward` takes them. Given ``batch_mean`` and
    ``batch_rstd`` (training mode, no running buffers), those are ``x``'s batch statistics, as an earlier training
    forward of the same ``x`` returned them: the forward is the apply launch alone, the backward the training one.
    """

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        running_mean: torch.Tensor | None,
        running_var: torch.Tensor | None,
        training: bool,
        momentum: float,
        eps: float,
        rows: torch.Tensor | None = None,
        count: torch.Tensor | None = None,
        batch_mean: torch.Tensor | None = None,
        batch_rstd: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x.contiguous()
        if training and batch_mean is not None:
            mean, rstd = batch_mean, batch_rstd
            out = bn_forward(x, mean, rstd, weight, bias)
        elif training:
            out, mean, rstd = bn_train_forward(x, weight, bias, eps, running_mean, running_var, momentum, rows, count)
        else:
            if rows is not None:
                slots = torch.arange(rows.numel(), device=rows.device)
                running_mean, running_var = (t[rows, slots].reshape(-1) for t in (running_mean, running_var))
            mean = running_mean.detach().to(torch.float32, copy=True)  # a copy: the buffer may change before backward
            rstd = torch.rsqrt(running_var.detach().to(torch.float32) + eps).contiguous()
            out = bn_forward(x, mean, rstd, weight, bias)
        ctx.save_for_backward(x, mean, rstd, weight)
        ctx.training = bool(training)
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: torch.Tensor):
        x, mean, rstd, weight = ctx.saved_tensors
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        dx, dweight, dbias = bn_backward(
            dout, x, mean, rstd, weight, ctx.training, need_dx=need_dx, need_param_grads=need_dw or need_db
        )
        dweight = dweight.to(weight.dtype) if need_dw else None
        dbias = dbias.to(ctx.bias_dtype) if need_db else None
        return dx, dweight, dbias, None, None, None, None, None, None, None, None, None


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    rows: torch.Tensor | None = None,
    count: torch.Tensor | None = None,
    batch_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.batch_norm`` (same signature and semantics) on the Triton kernels.

    ``num_batches_tracked`` is the module's business, as with ``F.batch_norm``. One difference: the output is
    always contiguous (NCHW), where PyTorch keeps a channels_last input's memory format.

    Banked statistics: with ``rows`` and ``count`` the running buffers are banks (:func:`bn_train_forward`), and the
    result is :func:`bn_banked_reference`'s, with its row gathers, scatters and count fused into the statistics
    launch.

    ``batch_stats``: in training mode without running buffers, ``input``'s batch ``(mean, rstd)`` as
    :func:`bn_train_forward` returned them for the same input (a recomputation): one launch, not two.
    """
    check_device(input, running_mean, running_var, weight, bias, rows, count)
    if input.dim() < 2:
        raise ValueError(f"batch_norm expects an input of shape [N, C, *], got {tuple(input.shape)}")
    if training:
        if input.numel() // max(1, input.shape[1]) == 1:  # F.batch_norm's _verify_batch_size
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
        if (running_mean is None) != (running_var is None):
            raise ValueError("batch_norm needs both running_mean and running_var, or neither")
        if batch_stats is not None and running_mean is not None:
            raise ValueError("batch_norm with batch_stats updates no running buffers: pass None for both")
    elif running_mean is None or running_var is None:
        raise RuntimeError("batch_norm in eval mode (training=False) needs running_mean and running_var")
    return BatchNormFn.apply(input, weight, bias, running_mean, running_var, bool(training), float(momentum),
                             float(eps), rows, count, *(batch_stats if training and batch_stats else (None, None)))


def bn_reference(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """The pure-PyTorch reference: ``F.batch_norm`` itself."""
    return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


def bn_banked_reference(
    input: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    rows: torch.Tensor,
    count: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """The pure-PyTorch reference of banked :func:`batch_norm`: gather the rows, ``F.batch_norm``, and in training
    mode scatter the new statistics back and count one more batch in each row."""
    slots = torch.arange(rows.numel(), device=rows.device)
    mean, var = (t[rows, slots].reshape(-1) for t in (running_mean, running_var))
    out = F.batch_norm(input, mean, var, weight, bias, training, momentum, eps)
    if training:
        with torch.no_grad():  # a context, not a decorator: torch.compile traces it
            running_mean.index_put_((rows, slots), mean.view(rows.numel(), -1))
            running_var.index_put_((rows, slots), var.view(rows.numel(), -1))
            count.index_put_((rows, slots), torch.ones_like(count[0]), accumulate=True)
    return out
