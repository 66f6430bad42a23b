"""Candidate operations of the DARTS search space (spec §3).

Module layouts (and therefore ``state_dict`` keys) follow the reference exactly:
``SepConv.op.{1,2,5,6}`` convolutions and ``op.{3,7}`` batch norms, ``DilConv.op.{1,2}`` / ``op.3``,
``ReLUConvBN.op.{1,2}``, ``FactorizedReduce.{conv_1,conv_2,bn}``, and pools wrapped as
``Sequential(pool, BatchNorm2d(C, affine=False))``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

CANDIDATES: tuple[str, ...] = (
    "skip_connect",
    "max_pool_3x3",
    "avg_pool_3x3",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
"""The 7 candidates in the reference order; indices 0-2 are the non-parametric group."""

NUM_CANDIDATES = len(CANDIDATES)
SKIP_INDEX = 0
POOL_INDICES = (1, 2)
PARAMETRIC_INDICES = (3, 4, 5, 6)


class Identity(nn.Module):
    """Stride-1 skip connection (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ReLUConvBN(nn.Module):
    """ReLU → conv → BN (``op.1`` conv, ``op.2`` BN)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class FusableConv(nn.Module):
    """An op made of ReLU → depthwise → pointwise → BN halves, which the device executor runs as the fused
    kernels of ``sswp_fast.kernels.sampled_dwpw`` from the modules' :meth:`halves`."""

    def halves(self) -> list[tuple[nn.Conv2d, nn.Conv2d, nn.BatchNorm2d]]:
        """(depthwise conv, pointwise conv, batch norm) of each half, in order."""
        layers = list(self.op)
        return [(layers[i + 1], layers[i + 2], layers[i + 3]) for i in range(0, len(layers), 4)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class DilConv(FusableConv):
    """ReLU → depthwise k×k (dilated) → pointwise 1×1 → BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=padding, dilation=dilation,
                      groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(FusableConv):
    """Two stacked ReLU → depthwise → pointwise → BN halves; only the first is strided."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, bias=False),
            nn.BatchNorm2d(c_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride=1, padding=padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class FactorizedReduce(nn.Module):
    """ReLU → two offset stride-2 1×1 convs concatenated → BN; halves the resolution."""

    def __init__(self, c_in: int, c_out: int, affine: bool):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        # A 1x1 stride-2 convolution is a 1x1 convolution of every other pixel; sampling first is cheaper and
        # sidesteps a heap corruption in torch 2.14's CPU backward of stride-2 1x1 convolutions on
        # channels-last inputs (seen at 64x64).
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        even = x[:, :, ::2, ::2].contiguous(memory_format=layout)
        odd = x[:, :, 1::2, 1::2].contiguous(memory_format=layout)
        return self.bn(torch.cat([F.conv2d(even, self.conv_1.weight), F.conv2d(odd, self.conv_2.weight)], dim=1))


def _pool(pool: nn.Module, channels: int) -> nn.Module:
    """Pools are followed by a non-affine BN in the search and compact cells (spec §3.2)."""
    return nn.Sequential(pool, nn.BatchNorm2d(channels, affine=False))


_BUILDERS: dict[str, Callable[[int, int, bool], nn.Module]] = {
    "skip_connect": lambda c, s, a: Identity() if s == 1 else FactorizedReduce(c, c, a),
    "max_pool_3x3": lambda c, s, a: _pool(nn.MaxPool2d(3, stride=s, padding=1), c),
    "avg_pool_3x3": lambda c, s, a: _pool(
        nn.AvgPool2d(3, stride=s, padding=1, count_include_pad=False), c),
    "sep_conv_3x3": lambda c, s, a: SepConv(c, c, 3, s, 1, a),
    "sep_conv_5x5": lambda c, s, a: SepConv(c, c, 5, s, 2, a),
    "dil_conv_3x3": lambda c, s, a: DilConv(c, c, 3, s, 2, 2, a),
    "dil_conv_5x5": lambda c, s, a: DilConv(c, c, 5, s, 4, 2, a),
}


def build_op(name: str, channels: int, stride: int, affine: bool) -> nn.Module:
    """Build candidate ``name`` mapping ``channels`` → ``channels`` at ``stride`` (1 or 2)."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown operation {name!r}; expected one of {', '.join(CANDIDATES)}") from None
    return builder(channels, stride, affine)
