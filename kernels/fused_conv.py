"""The DARTS separable and dilated convolutions (spec §3.2) on the Triton kernels.

An op is one or two halves, each ReLU → depthwise k×k → pointwise 1×1 → BatchNorm (``sep_conv``: two halves,
only the first strided; ``dil_conv``: one, dilated). Each half runs as the fused ReLU + depthwise + pointwise
kernel of :mod:`.dwpw` followed by the statistics and normalisation kernels of :mod:`.batchnorm` (training mode:
batch statistics with the running-stat update; eval mode: running statistics).

In recompute mode (the default) the op saves only its input, its weights and each BatchNorm's per-channel mean
and 1/std: backward recomputes the halves' activations from the input, so the op stores no intermediate
activation between forward and backward. Without it, the halves' inputs and pre-BN outputs are saved instead.

The modules keep their PyTorch parameters and buffers (same state-dict keys), so switching between these kernels
and the PyTorch path changes no checkpoint.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .batchnorm import bn_backward, bn_forward, bn_stats
from .dwpw import dwpw_backward, dwpw_forward

Half = tuple[nn.Conv2d, nn.Conv2d, nn.BatchNorm2d]
TENSORS_PER_HALF = 6  # depthwise weight, pointwise weight, BN weight, BN bias, running mean, running var
WEIGHTS_PER_HALF = 4  # the first four: what backward needs


class HalfSpec(NamedTuple):
    """The non-tensor settings of one half."""

    stride: int
    padding: int
    dilation: int
    batch_stats: bool  # normalise with the batch's statistics (training mode, or no running statistics)
    momentum: float
    eps: float


def _half_forward(h: torch.Tensor, spec: HalfSpec, tensors: tuple) -> tuple[torch.Tensor, torch.Tensor,
                                                                          torch.Tensor, torch.Tensor]:
    """(pre-BN output, BN output, mean, rstd) of one half; updates the running statistics in training mode."""
    w_dw, w_pw, gamma, beta, running_mean, running_var = tensors
    y = dwpw_forward(h, w_dw, w_pw, spec.stride, spec.padding, spec.dilation)
    if spec.batch_stats:
        mean, rstd, _ = bn_stats(y, spec.eps, running_mean, running_var, spec.momentum)
    else:
        mean, rstd = running_mean.float(), torch.rsqrt(running_var.float() + spec.eps)
    return y, bn_forward(y, mean, rstd, gamma, beta), mean, rstd


class FusedConvFn(torch.autograd.Function):
    """``apply(x, specs, recompute, *tensors)`` with :data:`TENSORS_PER_HALF` tensors per half."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, specs: tuple[HalfSpec, ...], recompute: bool, *tensors):
        h, stats, activations = x, [], []
        for i, spec in enumerate(specs):
            y, out, mean, rstd = _half_forward(h, spec, tensors[i * TENSORS_PER_HALF:(i + 1) * TENSORS_PER_HALF])
            stats += [mean, rstd]
            if not recompute:
                activations += [h, y]
            h = out
        ctx.specs, ctx.recompute = specs, recompute
        weights = [t for i, t in enumerate(tensors) if i % TENSORS_PER_HALF < WEIGHTS_PER_HALF]
        ctx.save_for_backward(x, *weights, *stats, *activations)  # not the running statistics: forward-only
        return h

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        specs, count = ctx.specs, len(ctx.specs)
        saved = ctx.saved_tensors
        x = saved[0]
        weights = saved[1:1 + count * WEIGHTS_PER_HALF]
        stats = saved[1 + count * WEIGHTS_PER_HALF:1 + count * (WEIGHTS_PER_HALF + 2)]
        per_half = [weights[i * WEIGHTS_PER_HALF:(i + 1) * WEIGHTS_PER_HALF] for i in range(count)]
        if ctx.recompute:
            inputs, pre_bn, h = [], [], x
            for i, spec in enumerate(specs):
                w_dw, w_pw, gamma, beta = per_half[i]
                inputs.append(h)
                pre_bn.append(dwpw_forward(h, w_dw, w_pw, spec.stride, spec.padding, spec.dilation))
                if i + 1 < count:
                    h = bn_forward(pre_bn[-1], stats[2 * i], stats[2 * i + 1], gamma, beta)
        else:
            activations = saved[1 + count * (WEIGHTS_PER_HALF + 2):]
            inputs, pre_bn = list(activations[0::2]), list(activations[1::2])
        grads: list[torch.Tensor | None] = [None] * (count * TENSORS_PER_HALF)
        d = dout
        for i in reversed(range(count)):
            spec = specs[i]
            w_dw, w_pw, gamma, beta = per_half[i]
            dy, d_gamma, d_beta = bn_backward(d, pre_bn[i], stats[2 * i], stats[2 * i + 1], gamma,
                                              training=spec.batch_stats, need_param_grads=gamma is not None)
            d, d_wdw, d_wpw = dwpw_backward(dy, inputs[i], w_dw, w_pw, spec.stride, spec.padding, spec.dilation)
            base = i * TENSORS_PER_HALF
            grads[base], grads[base + 1] = d_wdw, d_wpw
            if gamma is not None:
                grads[base + 2] = d_gamma.to(gamma.dtype)
            if beta is not None:
                grads[base + 3] = d_beta.to(beta.dtype)
        return (d, None, None, *grads)


def _spec_and_tensors(half: Half) -> tuple[HalfSpec, tuple]:
    depthwise, pointwise, bn = half
    batch_stats = bn.training or bn.running_mean is None
    momentum = bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)  # as nn.BatchNorm2d does
        if momentum is None:  # cumulative moving average
            momentum = 1.0 / float(bn.num_batches_tracked)
    update = bn.training and bn.track_running_stats
    spec = HalfSpec(depthwise.stride[0], depthwise.padding[0], depthwise.dilation[0], batch_stats,
                    0.0 if momentum is None else momentum, bn.eps)
    running = (bn.running_mean, bn.running_var) if (update or not batch_stats) else (None, None)
    return spec, (depthwise.weight, pointwise.weight, bn.weight, bn.bias, *running)


def fused_conv(halves: list[Half], x: torch.Tensor, recompute: bool = True) -> torch.Tensor:
    """Run the halves ``[(depthwise, pointwise, batch_norm), ...]`` of a sep/dil conv on ``x`` (NCHW)."""
    specs, tensors = zip(*(_spec_and_tensors(half) for half in halves), strict=True)
    return FusedConvFn.apply(x, tuple(specs), recompute, *(t for group in tensors for t in group))


def fused_conv_reference(halves: list[Half], x: torch.Tensor) -> torch.Tensor:
    """The PyTorch path the kernels are tested against: the modules themselves."""
    for depthwise, pointwise, bn in halves:
        x = bn(pointwise(depthwise(torch.relu(x))))
    return x
